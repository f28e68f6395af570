use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = edgeinfer::cmd::Cli::parse();
    match edgeinfer::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeinfer: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
