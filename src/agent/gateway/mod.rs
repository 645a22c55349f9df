//! Gateway API in the node agent: the objects it reads ([`types`]), how they become route-table
//! rules and statuses ([`build`]), and the task that writes those statuses ([`status`]).

pub mod build;
pub mod status;
pub mod types;
