//! `cargo xtask sweep`: a hyperparameter grid search of short training runs, with a table, a
//! plot and the best config written out.

use anyhow::bail;
use clap::Args;
use sophia_train::train::sweep::markdown_table;
use sophia_train::train::{RunOptions, SweepGrid, sweep};

use crate::train::{TrainArgs, config};

#[derive(Args, Debug)]
pub(crate) struct SweepArgs {
    /// The base run: every `cargo xtask train` flag (the sweep directory is runs/NAME).
    #[command(flatten)]
    base: TrainArgs,
    /// Peak learning rates to try, comma-separated (e.g. `3e-3,6e-3,1.2e-2`).
    #[arg(long, value_delimiter = ',', value_parser = crate::finite)]
    grid_lr: Vec<f64>,
    /// ρ values to try (SophiaG).
    #[arg(long, value_delimiter = ',', value_parser = crate::finite)]
    grid_rho: Vec<f64>,
    /// Weight decays to try.
    #[arg(long, value_delimiter = ',', value_parser = crate::finite)]
    grid_weight_decay: Vec<f64>,
    /// Batch sizes (sequences per micro-batch) to try.
    #[arg(long, value_delimiter = ',')]
    grid_batch_size: Vec<usize>,
    /// Warmup step counts to try.
    #[arg(long, value_delimiter = ',')]
    grid_warmup: Vec<usize>,
}

pub(crate) fn run(args: SweepArgs) -> anyhow::Result<()> {
    let mut base = config(&args.base)?;
    if args.base.name.is_none() {
        base.name = format!("sweep-{}", base.optimizer.kind());
    }
    let grid = SweepGrid { lr: args.grid_lr, rho: args.grid_rho, weight_decay: args.grid_weight_decay, batch_size: args.grid_batch_size, warmup_steps: args.grid_warmup };
    if grid.points(&base).len() < 2 {
        bail!("the grid has a single point: give a --grid-* flag two or more values, e.g. --grid-lr 3e-3,6e-3,1.2e-2");
    }
    let options = RunOptions { resume: false, progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()), stop_after: None };
    let report = match sweep(&base, &grid, &options, &mut |line| eprintln!("{line}")) {
        Ok(report) => report,
        Err(error) => bail!("{error}"),
    };
    let dir = base.out_dir.join(&base.name);
    println!();
    print!("{}", markdown_table(&report));
    println!();
    println!("results        {}", dir.join("sweep.json").display());
    println!("plot           {}", dir.join("sweep.png").display());
    match report.best {
        Some(best) => {
            let best_json = dir.join("best.json");
            println!(
                "best           val loss {:.4} at {}; train it with `cargo xtask train --config {}`",
                report.points[best].val_loss(),
                report.points[best].settings.label(),
                best_json.display(),
            );
        }
        None => println!("best           none: every point diverged; lower the learning rates"),
    }
    Ok(())
}
