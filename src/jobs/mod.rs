//! Backup jobs over a snapshot: the order snarfs are fetched in, the hashing and
//! compression pipeline, progress, and the socket protocol between a job and the daemon.

pub mod report;
