//! The process registry in the store's `run/` folder: every snarf process that runs a job
//! registers with its type (user, cron, remote, sshpipe) so stale and idle ones can be found.
