//! RTP payload formats, for the box's own leg only (phones' packets are forwarded as they
//! came): H.264 (RFC 6184: single NAL units, STAP-A, FU-A), VP8 (RFC 7741) and Opus
//! (RFC 7587, one packet per payload). The box's encoders give Annex B access units and VP8
//! frames, and its decoders take them; phones speak RTP.

use str0m::format::Codec;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;

/// An Annex B access unit as RTP payloads of at most `max_payload` bytes, in order: small NAL
/// units whole, larger ones in FU-A fragments. The marker belongs on the last.
pub fn packetize_h264(access_unit: &[u8], max_payload: usize) -> Vec<Vec<u8>> {
    // An FU-A fragment carries two bytes of headers and at least one of the unit.
    let max_payload = max_payload.max(3);
    let mut payloads = Vec::new();
    for nal in nal_units(access_unit) {
        if nal.len() <= max_payload {
            payloads.push(nal.to_vec());
            continue;
        }
        let indicator = (nal[0] & 0xE0) | FU_A;
        let nal_type = nal[0] & 0x1F;
        let chunks: Vec<&[u8]> = nal[1..].chunks(max_payload - 2).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut header = nal_type;
            if i == 0 {
                header |= 0x80;
            }
            if i == last {
                header |= 0x40;
            }
            let mut payload = Vec::with_capacity(chunk.len() + 2);
            payload.extend_from_slice(&[indicator, header]);
            payload.extend_from_slice(chunk);
            payloads.push(payload);
        }
    }
    payloads
}

/// A VP8 frame as RTP payloads of at most `max_payload` bytes, in order, each behind a
/// payload descriptor carrying the frame's 15-bit picture id (receivers tell a lost frame by
/// it); the first starts the frame's partition 0. The marker belongs on the last.
pub fn packetize_vp8(frame: &[u8], picture_id: u16, max_payload: usize) -> Vec<Vec<u8>> {
    const DESCRIPTOR: usize = 4;
    let id = (picture_id & 0x7FFF) | 0x8000;
    let [id_hi, id_lo] = id.to_be_bytes();
    frame
        .chunks(max_payload.max(DESCRIPTOR + 1) - DESCRIPTOR)
        .enumerate()
        .map(|(i, chunk)| {
            // X (extensions follow), S on the first; then I (a picture id follows).
            let first = if i == 0 { 0x90 } else { 0x80 };
            let mut payload = Vec::with_capacity(chunk.len() + DESCRIPTOR);
            payload.extend_from_slice(&[first, 0x80, id_hi, id_lo]);
            payload.extend_from_slice(chunk);
            payload
        })
        .collect()
}

/// The NAL units of an Annex B byte stream, without start codes (or the whole input as one
/// unit when it has none).
fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    // (where a start code begins, where its unit begins)
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i..i + 3] == [0, 0, 1] {
            let begin = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            starts.push((begin, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    if starts.is_empty() {
        return if stream.is_empty() {
            vec![]
        } else {
            vec![stream]
        };
    }
    let mut units = Vec::with_capacity(starts.len());
    for (n, &(_, unit_start)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(stream.len(), |&(begin, _)| begin);
        let mut unit = &stream[unit_start..end];
        while let [rest @ .., 0] = unit {
            unit = rest;
        }
        if !unit.is_empty() {
            units.push(unit);
        }
    }
    units
}

/// One frame from its packets' payloads, in sequence order, as the box's decoders take it:
/// Annex B for H.264, the bare frame for VP8, the packet for Opus. None when a payload is
/// malformed.
pub fn depacketize(codec: Codec, payloads: &[&[u8]]) -> Option<Vec<u8>> {
    let mut frame = Vec::with_capacity(payloads.iter().map(|p| p.len() + 4).sum());
    for payload in payloads {
        match codec {
            Codec::H264 => h264_payload(payload, &mut frame)?,
            Codec::Vp8 => frame.extend_from_slice(&payload[vp8_descriptor_len(payload)?..]),
            Codec::Opus => frame.extend_from_slice(payload),
            _ => return None,
        }
    }
    Some(frame)
}

fn h264_payload(payload: &[u8], frame: &mut Vec<u8>) -> Option<()> {
    let first = *payload.first()?;
    match first & 0x1F {
        1..=23 => {
            frame.extend_from_slice(&START_CODE);
            frame.extend_from_slice(payload);
        }
        STAP_A => {
            let mut rest = &payload[1..];
            while !rest.is_empty() {
                let [hi, lo, tail @ ..] = rest else {
                    return None;
                };
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                if len == 0 || len > tail.len() {
                    return None;
                }
                frame.extend_from_slice(&START_CODE);
                frame.extend_from_slice(&tail[..len]);
                rest = &tail[len..];
            }
        }
        FU_A => {
            let header = *payload.get(1)?;
            if header & 0x80 != 0 {
                frame.extend_from_slice(&START_CODE);
                frame.push((first & 0xE0) | (header & 0x1F));
            }
            frame.extend_from_slice(&payload[2..]);
        }
        // Other aggregation and fragmentation modes are not negotiated (mode 1 only).
        _ => return None,
    }
    Some(())
}

/// The length of a VP8 payload descriptor (RFC 7741 §4.2).
fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut len = 1;
    if first & 0x80 != 0 {
        let extension = *payload.get(1)?;
        len += 1;
        if extension & 0x80 != 0 {
            // PictureID: seven bits, or fifteen when its first bit is set.
            len += if *payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
        }
        if extension & 0x40 != 0 {
            len += 1;
        }
        if extension & 0x30 != 0 {
            len += 1;
        }
    }
    (len <= payload.len()).then_some(len)
}

/// Whether this payload begins a keyframe (an IDR or its parameter sets; a VP8 key frame).
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => h264_starts_keyframe(payload),
        Codec::Vp8 => {
            let Some(len) = vp8_descriptor_len(payload) else {
                return false;
            };
            let start_of_partition = payload[0] & 0x10 != 0;
            let partition = payload[0] & 0x0F;
            // The frame tag's lowest bit is clear on a key frame.
            start_of_partition && partition == 0 && payload.get(len).is_some_and(|b| b & 1 == 0)
        }
        _ => false,
    }
}

fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let key = |nal_type: u8| nal_type == NAL_IDR || nal_type == NAL_SPS;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1F {
        STAP_A => {
            let mut rest = &payload[1..];
            while let [hi, lo, tail @ ..] = rest {
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                match tail.first() {
                    Some(nal) if len > 0 && len <= tail.len() => {
                        if key(nal & 0x1F) {
                            return true;
                        }
                        rest = &tail[len..];
                    }
                    _ => return false,
                }
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && key(h & 0x1F)),
        nal_type => key(nal_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annex_b(units: &[&[u8]]) -> Vec<u8> {
        units
            .iter()
            .flat_map(|u| [&START_CODE[..], u].concat())
            .collect()
    }

    #[test]
    fn an_access_unit_survives_packetizing_and_depacketizing() {
        let sps = [0x67, 0x42, 0xe0, 0x1f];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000).map(|i| (i % 251) as u8 | 1))
            .collect();
        let unit = annex_b(&[&sps, &pps, &idr]);
        let payloads = packetize_h264(&unit, 1200);
        assert!(payloads.iter().all(|p| p.len() <= 1200));
        assert_eq!(
            payloads.len(),
            2 + 3,
            "SPS and PPS whole, the IDR in three fragments"
        );
        assert!(starts_keyframe(Codec::H264, &payloads[0]));
        assert!(
            starts_keyframe(Codec::H264, &payloads[2]),
            "the IDR's first fragment"
        );
        assert!(
            !starts_keyframe(Codec::H264, &payloads[3]),
            "a middle fragment"
        );
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(depacketize(Codec::H264, &refs).unwrap(), unit);
    }

    #[test]
    fn three_byte_start_codes_and_trailing_zeros_are_understood() {
        let stream = [0, 0, 1, 0x41, 7, 7, 0, 0, 0, 0, 1, 0x41, 9];
        assert_eq!(nal_units(&stream), vec![&[0x41, 7, 7][..], &[0x41, 9][..]]);
    }

    #[test]
    fn stap_a_is_unpacked_and_seen_as_a_keyframe() {
        let stap = [STAP_A, 0, 2, 0x67, 1, 0, 2, 0x68, 2, 0, 1, 0x65];
        assert!(starts_keyframe(Codec::H264, &stap));
        let frame = depacketize(Codec::H264, &[&stap]).unwrap();
        assert_eq!(frame, annex_b(&[&[0x67, 1], &[0x68, 2], &[0x65]]));
        assert!(!starts_keyframe(Codec::H264, &[0x41, 1]));
    }

    #[test]
    fn malformed_payloads_are_refused_not_panicked_on() {
        for bad in [&[][..], &[STAP_A, 0, 9, 1], &[FU_A], &[30, 1]] {
            assert_eq!(depacketize(Codec::H264, &[bad]), None, "{bad:?}");
            let _ = starts_keyframe(Codec::H264, bad);
        }
        assert_eq!(depacketize(Codec::Vp8, &[&[0x80]]), None);
        assert_eq!(depacketize(Codec::Vp8, &[&[0x90, 0x80]]), None);
    }

    #[test]
    fn a_vp8_frame_survives_packetizing_and_depacketizing() {
        // A key frame's tag (lowest bit clear), then its data.
        let frame: Vec<u8> = std::iter::once(0x10)
            .chain((0..2500).map(|i| i as u8))
            .collect();
        let payloads = packetize_vp8(&frame, 0x7FFF + 5, 1100);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() <= 1100));
        assert!(starts_keyframe(Codec::Vp8, &payloads[0]));
        assert!(!starts_keyframe(Codec::Vp8, &payloads[1]), "not a start");
        assert_eq!(
            &payloads[0][2..4],
            &[0x80, 4],
            "the picture id wraps at 15 bits"
        );
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(depacketize(Codec::Vp8, &refs).unwrap(), frame);
    }

    #[test]
    fn vp8_descriptors_are_stripped_and_key_frames_seen() {
        // X, S, partition 0; I with a 15-bit picture id; then a key frame's tag.
        let key = [0x90, 0x80, 0x81, 0x23, 0x10, 0xAA];
        assert!(starts_keyframe(Codec::Vp8, &key));
        let delta = [0x10, 0x11, 0xBB];
        assert!(!starts_keyframe(Codec::Vp8, &delta));
        let rest = [0x00, 0xCC];
        assert_eq!(
            depacketize(Codec::Vp8, &[&key, &rest]).unwrap(),
            vec![0x10, 0xAA, 0xCC]
        );
    }
}
