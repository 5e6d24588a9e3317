//! Beyond one run: limiting a map to an area of interest, splitting one map
//! into parts, merging the parts, and Slurm job scripts. rstile ships no
//! scheduler of its own.

pub mod aoi;
pub mod merge;
pub mod parts;
pub mod slurm;
