use clap::Args;

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only the version number
    #[arg(long)]
    short: bool,
    /// Output format: pretty or json
    #[arg(long, default_value = "pretty", value_parser = ["pretty", "json"])]
    format: String,
}

pub fn run(a: &VersionArgs) -> anyhow::Result<i32> {
    let v = env!("CARGO_PKG_VERSION");
    if a.short {
        println!("{v}");
    } else if a.format == "json" {
        println!(
            "{}",
            serde_json::json!({
                "version": v,
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
            })
        );
    } else {
        println!(
            "berth version {v} ({}/{})",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
    }
    Ok(0)
}
