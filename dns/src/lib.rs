//! Cluster DNS for Switchyard (the `switchyard-dns` crate): the cluster zone and the forwarder.
