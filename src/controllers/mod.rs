//! Controllers that run inside the server: address and port allocation for Services, and the
//! EndpointSlice controller.

pub mod allocator;
pub mod endpointslice;
