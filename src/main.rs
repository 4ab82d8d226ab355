//! `hearth`: the daemon and the owner's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use hearth::config::board::Board;
use hearth::daemon::control::{OnOff, Request, Response, Simulation};
use hearth::daemon::{self, control};
use hearth::reach::mapper::{probe, MapperConfig};
use hearth::{config, media};

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Family video calls from a box at home"
)]
struct Cli {
    /// Where Hearth keeps its certificate, invites and control socket.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "dev")]
        board: Board,
        /// Open the call to the local network (the dev board is loopback-only without it).
        #[arg(long)]
        lan: bool,
    },
    /// Make a new join link (or list or revoke them).
    Invite {
        /// Who the link is for (shown in `--list`).
        #[arg(long, default_value = "Guest")]
        name: String,
        /// How long the link works, e.g. 2h, 24h, 7d.
        #[arg(long, value_parser = config::parse_ttl)]
        ttl: Option<std::time::Duration>,
        #[arg(long, conflicts_with = "revoke")]
        list: bool,
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
        /// Knock first: whoever comes with the link waits until someone at home lets them in.
        #[arg(long)]
        knock: bool,
    },
    /// Let in (or turn away) someone knocking; `hearth status` lists the knocks.
    Knock {
        id: u64,
        #[arg(value_enum)]
        answer: KnockAnswer,
    },
    /// End someone's part in the call (an id from `hearth status`, like p3).
    Remove { participant: String },
    /// The privacy log's latest lines.
    PrivacyLog,
    /// The box's name on everyone's screen.
    Rename { name: String },
    /// The phones that own the box (paired by the switch pattern at the box).
    Owners {
        #[arg(long, value_name = "ID", conflicts_with = "pairing_url")]
        revoke: Option<String>,
        /// Print the owner page link the TV shows as a QR code after the switch pattern
        /// (on, off, on), while it works: for a box whose TV you cannot scan.
        #[arg(long)]
        pairing_url: bool,
    },
    /// First boot: apply hearth-setup.toml from the boot partition (Wi-Fi, the box's name),
    /// then remove it. Run by hearth-setup.service before the network starts; with
    /// `--request`, the Wi-Fi picked on the setup page (hearth-wifi-request.service).
    Setup {
        #[arg(long, default_value = "/boot/firmware", value_name = "DIR")]
        boot: PathBuf,
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
        /// Apply this request from the setup page instead of the boot partition's file
        /// (only while the setup hotspot is open).
        #[arg(long, value_name = "FILE")]
        request: Option<PathBuf>,
        /// The setup hotspot's description, present while it is open.
        #[arg(long, default_value = hearth::setup::hotspot::DEFAULT_FILE, value_name = "FILE")]
        hotspot_file: PathBuf,
        /// Instead: wait this many seconds for the new Wi-Fi to give the box a network; if it
        /// does not, undo it and open the setup hotspot again.
        #[arg(long, value_name = "SECS", conflicts_with = "request")]
        keep_wifi_within: Option<u64>,
    },
    /// No cable and no Wi-Fi configured: open the box's own Wi-Fi for the setup page
    /// (runs as wpa_supplicant until stopped). Run by hearth-hotspot.service, as root.
    Hotspot {
        #[arg(long, default_value = "/run/hearth-hotspot", value_name = "DIR")]
        run_dir: PathBuf,
        #[arg(long, default_value = "/run/systemd/network", value_name = "DIR")]
        network_dir: PathBuf,
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
    },
    /// Who is in the call, as JSON.
    Status,
    /// What this machine has for the board profile; fails when hardware is missing.
    Check {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "dev")]
        board: Board,
    },
    /// Write what the TV shows right now to a PNG file.
    Snapshot { file: PathBuf },
    /// Turn privacy on or off (off only on the dev board: on a real box only the physical
    /// switch turns privacy off). Returns once it has taken effect.
    Privacy {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Simulated devices: unplug or plug the dev camera or mic, or flip a simulated switch.
    Simulate {
        #[command(subcommand)]
        simulation: Simulation,
    },
    /// Print or check configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KnockAnswer {
    LetIn,
    Decline,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the full default configuration as commented TOML.
    Default,
    /// Validate a configuration file.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
                .unwrap_or_else(|_| "hearth=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let state_dir = cli.state_dir.unwrap_or_else(daemon::default_state_dir);
    match cli.command {
        Command::Run { config, board, lan } => {
            let config = load_config(config.as_deref())?;
            install_crypto();
            runtime()?.block_on(daemon::run(daemon::RunOptions {
                state_dir,
                config,
                board,
                lan,
            }))
        }
        Command::Invite {
            name,
            ttl,
            list,
            revoke,
            knock,
        } => invite(&state_dir, name, ttl, list, revoke, knock),
        Command::Knock { id, answer } => print_answer(
            &state_dir,
            &Request::KnockAnswer {
                knock: id,
                let_in: matches!(answer, KnockAnswer::LetIn),
            },
        ),
        Command::Remove { participant } => {
            print_answer(&state_dir, &Request::Remove { participant })
        }
        Command::PrivacyLog => {
            let lines = ask(&state_dir, &Request::PrivacyLog {})?;
            for line in lines.as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::Rename { name } => print_answer(&state_dir, &Request::Rename { name }),
        Command::Owners {
            pairing_url: true, ..
        } => {
            let answer = ask(&state_dir, &Request::OwnerPairingUrl {})?;
            println!("{}", answer["url"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Owners { revoke: None, .. } => print_answer(&state_dir, &Request::Owners {}),
        Command::Owners {
            revoke: Some(id), ..
        } => print_answer(&state_dir, &Request::OwnerRevoke { id }),
        Command::Setup {
            root,
            keep_wifi_within: Some(secs),
            ..
        } => {
            let within = std::time::Duration::from_secs(secs);
            if hearth::setup::radio::keep_wifi_if_it_works(&root, within) {
                println!("hearth setup: connected");
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "no network within {secs} s: the Wi-Fi was undone and the setup hotspot opened again"
                ))
            }
        }
        Command::Setup {
            boot,
            root,
            request,
            hotspot_file,
            keep_wifi_within: None,
        } => {
            let applied = match &request {
                // The daemon's user writes requests: they count only while the box has no
                // network and shows its hotspot, never to replace a working Wi-Fi.
                Some(file) if !hotspot_file.exists() => {
                    let _ = std::fs::remove_file(file).or_else(|_| std::fs::remove_dir(file));
                    return Err(anyhow::anyhow!(
                        "the setup hotspot is not open: request removed, not applied"
                    ));
                }
                Some(file) => {
                    let applied = hearth::setup::apply_file(file, None, &root, true);
                    // Whatever it was, it does not stay to fire the path unit again.
                    let _ = std::fs::remove_dir(file);
                    applied?
                }
                None => hearth::setup::apply(&boot, &root)?,
            };
            match applied {
                Ok(hearth::setup::Applied::Nothing) if request.is_some() => {
                    Err(anyhow::anyhow!("no request to apply"))
                }
                Ok(hearth::setup::Applied::Nothing) => Ok(()),
                Ok(done) => {
                    println!("hearth setup: applied {done:?}");
                    Ok(())
                }
                Err(why) if request.is_some() => Err(anyhow::anyhow!("{why} (request removed)")),
                Err(why) => Err(anyhow::anyhow!(
                    "{why} (removed; the reason is in {} on the card)",
                    hearth::setup::ERROR_FILE
                )),
            }
        }
        Command::Hotspot {
            run_dir,
            network_dir,
            root,
        } => {
            use hearth::setup::radio;
            if let Err(why) = radio::needed(&root) {
                println!("hearth hotspot: not needed ({why:?})");
                return Ok(());
            }
            let paths = radio::HotspotPaths {
                run_dir,
                network_dir,
                root,
            };
            let hotspot = radio::prepare(&paths, radio::scan())?;
            // The password is on the TV only, never in the journal.
            println!(
                "hearth hotspot: Wi-Fi \"{}\" open for setup; the TV shows how to join",
                hotspot.ssid
            );
            Err(radio::run_access_point(&paths).into())
        }
        Command::Status => {
            let value = ask(&state_dir, &Request::Status {})?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Command::Check { config, board } => check(&state_dir, config.as_deref(), board),
        Command::Snapshot { file } => {
            // The daemon writes the file, so it needs an absolute path.
            let path = std::path::absolute(&file)?;
            let request = Request::Snapshot {
                path: path.display().to_string(),
            };
            ask(&state_dir, &request)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Privacy { state } => {
            let answer = ask(&state_dir, &Request::Privacy { state })?;
            println!("privacy {}", answer["privacy"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Simulate { simulation } => {
            ask(&state_dir, &Request::Simulate { simulation })?;
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let config = config::load(&file)?;
            // `[board]` overrides fields of the board's profile; every profile has the same
            // fields, so a misspelt or mistyped override is wrong on every board.
            for board in [Board::Dev, Board::Pi4, Board::Pi5] {
                board
                    .profile(&config.board)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            }
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<config::Config> {
    Ok(match path {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    })
}

fn invite(
    state_dir: &Path,
    name: String,
    ttl: Option<std::time::Duration>,
    list: bool,
    revoke: Option<String>,
    knock: bool,
) -> Result<()> {
    let request = if list {
        Request::InviteList {}
    } else if let Some(id) = revoke {
        Request::InviteRevoke { id }
    } else {
        Request::InviteCreate {
            name,
            ttl_secs: ttl.map(|t| t.as_secs()),
            knock,
        }
    };
    let value = ask(state_dir, &request)?;
    let url = value.get("url").and_then(|u| u.as_str());
    let at_home = value.get("at_home").and_then(|u| u.as_str());
    match (&request, url, at_home) {
        (Request::InviteCreate { .. }, Some(url), None) => println!("{url}"),
        // The router cannot loop the outside link back into the home: two links.
        (Request::InviteCreate { .. }, Some(url), Some(home)) => {
            println!("{url}\nAt home (the router does not loop the link above back in): {home}")
        }
        _ => println!("{}", serde_json::to_string_pretty(&value)?),
    }
    Ok(())
}

fn check(state_dir: &Path, config: Option<&Path>, board: Board) -> Result<()> {
    let config = load_config(config)?;
    let profile = board.profile(&config.board)?;
    media::init().map_err(|e| anyhow::anyhow!(e))?;
    let (report, mut ok) = media::check::report(&profile);
    print!("{report}");
    if config.remote.port_mapping.is_on(board) {
        let (report, reachable) = runtime()?.block_on(reach_check(state_dir, &config));
        print!("{report}");
        ok &= reachable;
    }
    if !ok {
        anyhow::bail!("the {board:?} profile's hardware or network is not all here");
    }
    Ok(())
}

/// Whether the router forwards to the box: the running daemon's view if it runs (a second
/// request for the same ports would disturb its forwarding), else one look at the router.
async fn reach_check(state_dir: &Path, config: &config::Config) -> (String, bool) {
    if let Ok(Response::Ok(status)) = control::request(state_dir, &Request::Status {}).await {
        let reach = &status["reach"];
        let text = format!(
            "\nFamily outside the home (as the running Hearth sees it): {}\n",
            serde_json::to_string(reach).unwrap_or_default()
        );
        return (text, reach["outside"] == true);
    }
    let mapper = MapperConfig::new(config, config.call.udp_port);
    let reach = probe(&mapper).await;
    let mut text = format!("\nFamily outside the home: {}\n", reach.tv_line());
    if let Some(m) = reach.mapping() {
        text += &format!(
            "  the router answers {}: external address {}, HTTPS port {}, media port {}\n",
            m.via, m.external_ip, m.https_port, m.media_port
        );
    }
    (text, reach.mapping().is_some())
}

/// Ask the daemon and print its answer as JSON.
fn print_answer(state_dir: &Path, request: &Request) -> Result<()> {
    let value = ask(state_dir, request)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// One crypto backend (aws-lc, with NEON paths on a Pi 4) for both TLS and DTLS-SRTP.
fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    str0m::crypto::from_feature_flags().install_process_default();
}

fn ask(state_dir: &Path, request: &Request) -> Result<serde_json::Value> {
    let response = runtime()?.block_on(control::request(state_dir, request))?;
    match response {
        Response::Ok(value) => Ok(value),
        Response::Error(message) => Err(anyhow::anyhow!(message)),
    }
}
