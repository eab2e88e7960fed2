//! Pneumoscope's trainer: `train`, `evaluate` and `predict`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use trainer::device::{self, DeviceChoice};
use trainer::{
    average, calibrate, evaluate, gate_check, keep_classes, predict, quantize, training,
};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Train, evaluate and run Pneumoscope's chest X-ray ResNet50"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune (or train from scratch) on an ImageFolder with the seed paper's recipe.
    Train(training::TrainArgs),
    /// Classification report and confusion matrix on a labelled ImageFolder.
    Evaluate {
        #[command(flatten)]
        args: evaluate::EvaluateArgs,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Fit temperature scaling and the out-of-distribution gate to a trained model, in place.
    Calibrate {
        #[command(flatten)]
        args: calibrate::CalibrateArgs,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Share of each kind of unlike image (one sub-folder each) the out-of-distribution gate flags.
    CheckGate {
        #[command(flatten)]
        args: gate_check::CheckGateArgs,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// int8 weights (per-channel scales) from float ones, for a smaller download.
    Quantize(quantize::QuantizeArgs),
    /// One model whose weights are the weighted mean of several fine-tuned from one another.
    Average(average::AverageArgs),
    /// The same network answering among only some of its classes (a five-class model as three).
    KeepClasses(keep_classes::KeepClassesArgs),
    /// Class probabilities for image files.
    Predict {
        #[command(flatten)]
        args: predict::PredictArgs,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
}

fn main() -> Result<()> {
    trainer::keep_freed_memory();
    match Cli::parse().command {
        Command::Train(args) => {
            training::run(&args)?;
        }
        Command::Evaluate { args, device } => {
            evaluate::run(&args, &device::select(device)?)?;
        }
        Command::Calibrate { args, device } => {
            calibrate::run(&args, &device::select(device)?)?;
        }
        Command::CheckGate { args, device } => {
            gate_check::run(&args, &device::select(device)?)?;
        }
        Command::Quantize(args) => {
            quantize::run(&args)?;
        }
        Command::Average(args) => {
            average::run(&args)?;
        }
        Command::KeepClasses(args) => {
            keep_classes::run(&args)?;
        }
        Command::Predict { args, device } => {
            if !predict::run(&args, &device::select(device)?)? {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}
