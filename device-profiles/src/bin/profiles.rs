//! `profiles`: check device profiles and a site file, and summarise what they describe.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use device_profiles::{Catalog, GANZHOU_SITE, PROFILES_DIR};

/// Check CitySense device profiles and site files.
///
/// Every problem is printed as FILE:LINE:COLUMN: REASON, and the exit status is non-zero when
/// there is any. Run it before deploying a changed site file to a gateway.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and validate profiles and a site; print a summary of the site.
    ///
    /// Example: profiles check --site device-profiles/sites/ganzhou.toml
    Check {
        /// Folder of profile files (one *.toml per device kind).
        #[arg(long, default_value = PROFILES_DIR)]
        profiles: PathBuf,
        /// The site file.
        #[arg(long, default_value = GANZHOU_SITE)]
        site: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { profiles, site } => match Catalog::load(&profiles, &site) {
            Ok(catalog) => {
                print!("{}", summary(&catalog));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn summary(c: &Catalog) -> String {
    let s = &c.site;
    let mut out = format!(
        "site {} ({}): {} districts, {} devices, {} profiles\n",
        s.site.id,
        s.site.name,
        s.districts.len(),
        s.devices.len(),
        c.profiles.len()
    );
    for a in &s.scenic_areas {
        out += &format!(
            "  scenic area {:<3} {:<20} capacity {:>6} at once, {:>7} a day, {:>2} gates, open {}–{}\n",
            a.id,
            a.name,
            a.capacity.instantaneous,
            a.capacity.daily,
            s.gates.iter().filter(|g| g.area == a.id).count(),
            a.hours.open,
            a.hours.close
        );
    }
    for r in &s.road_segments {
        out += &format!(
            "  road        {:<3} {:<20} {:?}, {} lanes, {} m, {} detectors\n",
            r.id,
            r.name,
            r.class,
            r.lanes,
            r.length_m,
            r.detectors.len()
        );
    }
    for p in &s.pipe_assets {
        out += &format!(
            "  pipe asset  {:<3} {:<20} {:?}, sensors: {}\n",
            p.id,
            p.name,
            p.kind,
            p.devices.join(", ")
        );
    }
    out
}
