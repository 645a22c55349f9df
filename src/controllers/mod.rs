//! Controllers that run inside the server, following the store's event feed: the EndpointSlice
//! controller, the ServiceAccount controller, the node-certificate controller and ClusterRole
//! aggregation. They write through the store like any client and may depend on `store` and on
//! the `apiserver`'s resource table, never the other way round.

pub mod aggregation;
pub mod certificates;
pub mod endpointslice;
pub mod serviceaccounts;
