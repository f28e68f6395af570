use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = edgeinfer::cli::Cli::parse();
    match edgeinfer::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeinfer: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
