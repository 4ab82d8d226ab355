//! What capture hardware this machine has, from GStreamer's device providers (V4L2 and,
//! where installed, libcamera): the same view the pipelines will get.

use gstreamer as gst;
use gstreamer::prelude::*;

#[derive(Debug, Clone)]
pub struct Camera {
    /// "v4l2" or "libcamera".
    pub api: String,
    pub name: String,
    /// Device node for V4L2 cameras.
    pub path: Option<String>,
    pub formats: Vec<String>,
}

pub fn cameras() -> Vec<Camera> {
    let monitor = gst::DeviceMonitor::new();
    monitor.add_filter(Some("Video/Source"), None);
    if monitor.start().is_err() {
        return Vec::new();
    }
    let found = monitor
        .devices()
        .into_iter()
        .map(|device| {
            let props = device.properties();
            let text = |key: &str| props.as_ref().and_then(|p| p.get::<String>(key).ok());
            let path = text("api.v4l2.path").or_else(|| text("device.path"));
            let api = text("device.api").unwrap_or_else(|| {
                if path.is_some() {
                    "v4l2".into()
                } else {
                    "libcamera".into()
                }
            });
            let formats = device
                .caps()
                .map(|caps| caps.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            Camera {
                api,
                name: device.display_name().to_string(),
                path,
                formats,
            }
        })
        .collect();
    monitor.stop();
    found
}

/// From one look at the machine: how many libcamera cameras, and the V4L2 device nodes.
/// (One DeviceMonitor pass: starting one probes every device.)
pub fn split(cameras: &[Camera]) -> (usize, Vec<String>) {
    let libcamera = if gst::ElementFactory::find("libcamerasrc").is_some() {
        cameras.iter().filter(|c| c.api == "libcamera").count()
    } else {
        0
    };
    let v4l2 = cameras
        .iter()
        .filter(|c| c.api == "v4l2")
        .filter_map(|c| c.path.clone())
        .collect();
    (libcamera, v4l2)
}

/// ALSA PCM devices, from /proc (present without any ALSA library).
pub fn alsa_devices() -> Vec<String> {
    std::fs::read_to_string("/proc/asound/pcm")
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}
