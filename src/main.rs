use clap::Parser;

use vmm::config::Cli;

mod host_check;

fn init_logging(level: Option<&str>, name: &'static str) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder.format(move |buf, record| {
        use std::io::Write;
        writeln!(buf, "{name}: [{}] {}", record.level(), record.args())
    });
    builder.init();
}

fn main() {
    // `vmm remote ...` runs a device process instead of a VM.
    if std::env::args().nth(1).as_deref() == Some("remote") {
        let cli = vmm::remote::cli::RemoteCli::parse_from(std::env::args().skip(1));
        let vmm::remote::cli::RemoteKind::Lsi { log_level, .. } = &cli.device;
        init_logging(log_level.as_deref(), "vmm-remote");
        if let Err(e) = vmm::remote::cli::run(cli.device) {
            eprintln!("vmm-remote: error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    // Like `remote`, before clap: `vmm host-check` needs no --kernel.
    if args.get(1).map(String::as_str) == Some("host-check") {
        init_logging(None, "vmm");
        std::process::exit(host_check::main(&args[2..]));
    }
    if vmm::config::asks_for_remote_dev_help(&args) {
        print!("{}", vmm::proxy::spec_help::help_text());
        return;
    }
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), "vmm");
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
