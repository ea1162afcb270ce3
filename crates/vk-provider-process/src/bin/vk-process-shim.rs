//! The per-container shim as a standalone binary — the same code vkubelet runs as
//! `vkubelet process-shim` — for running the provider's tests without vkubelet (set
//! `shimCommand` to this binary).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match vk_provider_process::shim::ShimArgs::parse(&args) {
        Some(shim) => std::process::exit(vk_provider_process::shim::run(shim)),
        None => {
            eprintln!("usage: vk-process-shim dir=DIR restart=N [option=value ...] -- COMMAND...");
            std::process::exit(2);
        }
    }
}
