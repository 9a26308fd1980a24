//! `vfio_user_toy SOCKET`: serves the toy device (`toy.rs`) with the
//! rust-vmm `vfio_user` crate to one client on a UNIX socket, and exits 0
//! when that client hangs up. What happens to the device goes to stderr,
//! one `toy:` line each. The KVM test rig runs it for
//! `tests/vfio_user_crate.rs`: our VMM connects as the client and a guest
//! drives the device.

mod toy;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(socket), None) = (args.next(), args.next()) else {
        eprintln!("usage: vfio_user_toy SOCKET");
        return ExitCode::from(2);
    };
    let socket = PathBuf::from(socket);
    let server = match toy::server(&socket) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("toy: cannot listen on {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!("toy: listening on {}", socket.display());
    let mut device = toy::Toy::new(Box::new(std::io::stderr()));
    match server.run(&mut device) {
        Ok(()) => {
            eprintln!("toy: client gone after {} reset(s)", device.resets);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toy: serving failed: {e}");
            ExitCode::FAILURE
        }
    }
}
