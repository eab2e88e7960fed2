//! Pneumoscope's trainer as a library: data, augmentation, optimisation, training, evaluation and
//! prediction. The `trainer` binary is a thin clap front end over it.

pub mod augment;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod optim;
pub mod plots;
pub mod predict;
pub mod training;
