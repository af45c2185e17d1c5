//! Building images from Dockerfiles (see DESIGN, "Builds"). So far: the parser, with
//! line-numbered errors; the executor (each `RUN` a berth container, each step a layer in the
//! store, cached by parent, instruction and copied content) comes next.

pub mod dockerfile;
pub mod exec;
pub mod layer;
