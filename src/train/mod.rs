//! Training: loss, optimisers, schedules, data loading, augmentation
//! (`crate::train::augment`), ImageNet initialisation, and the training loop with
//! its run directory (`rstile train`).

pub mod augment;
pub mod config;
pub mod data;
pub mod loss;
pub mod optim;
pub mod patches;
pub mod plot;
pub mod pretrained;
pub mod run;
pub mod schedule;

pub use config::TrainConfig;
pub use data::{DataSource, Dataset, MemorySource, ScenePair, SceneSource};
pub use loss::{cross_entropy, Loss, LossKind};
pub use run::{train, EpochMetrics, Quiet, RunOptions, TrainProgress, TrainReport};
