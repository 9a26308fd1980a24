use clap::Parser;

use vmm::config::Cli;

fn init_logging(level: Option<&str>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder.format(|buf, record| {
        use std::io::Write;
        writeln!(buf, "vmm: [{}] {}", record.level(), record.args())
    });
    builder.init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match vmm::vmm::run(&cli.vm_config()) {
        Ok(reason) => {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            match &reason {
                vmm::vmm::stop::StopReason::VcpuFault(what) => eprintln!("vmm: error: {what}"),
                other => log::info!("VM stopped: {other:?}"),
            }
            std::process::exit(reason.exit_code());
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            std::process::exit(1);
        }
    }
}
