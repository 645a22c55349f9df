//! Controllers that run inside the server, following the store's event feed: the EndpointSlice
//! controller and the ServiceAccount controller. They write through the store like any client and may depend on `store` and on
//! the `apiserver`'s resource table, never the other way round.

pub mod endpointslice;
pub mod serviceaccounts;
