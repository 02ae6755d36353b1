//! The idle policy as a pure function: given the live registry entries and a list of
//! processes, which processes a new `user` job on a repository should stop. Nothing here
//! reads /proc or sends a signal, so every rule is unit-tested with made-up processes.
//!
//! The rules, most conservative first:
//! - never the caller, its ancestors, its descendants, init (pid 1), or an explicitly
//!   protected pid (the mount daemon);
//! - never a process that is not provably snarf's own: it must run the same snarf
//!   executable (or the file that replaced it at the same path), under the caller's uid,
//!   in the caller's PID namespace; the registry file is only a claim, so whatever it says
//!   about any other process (`sleep`, init, another user's job) is never acted on;
//! - never a `cron`, `remote` or `sshpipe` entry, whatever its state, and never a `user`
//!   entry that is running or finishing;
//! - a `user` entry that is idle, works on the same repository, registered before the
//!   caller (registry file order), was written in the caller's PID namespace and whose
//!   process runs a snarf job command line (`snarf backup ...`) is stopped;
//! - a process running the same snarf binary is stopped as a leftover helper only if it is
//!   marked as a helper of this store (its [`HELPER_ENV`](super::HELPER_ENV) names this
//!   run folder), does not look like a mount daemon, and neither it nor any ancestor is a
//!   registered process that stays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::entry::{Entry, ProcState, ProcType};
use super::procfs::ProcessInfo;

/// Why the policy chose a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An older idle `user` job on the same repository.
    IdleUserJob,
    /// A snarf helper of this store that no staying registry entry accounts for.
    Helper,
}

/// A process the policy decided to stop, identified by pid and start time so the executor
/// can refuse to signal a reused pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot, as the policy saw it.
    pub start_time: u64,
    /// Why it is stopped.
    pub reason: StopReason,
}

/// Everything the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct IdleSweep<'a> {
    /// Repository the new job is about to work on.
    pub repo: &'a str,
    /// The store's run folder, which helper markers must name.
    pub run_dir: &'a Path,
    /// The process starting the new job.
    pub caller: u32,
    /// Live registry entries, in registration order.
    pub entries: &'a [Entry],
    /// Live processes to consider (normally every process on the machine).
    pub processes: &'a [ProcessInfo],
    /// Pids never to touch besides the caller's family (e.g. the mount daemon).
    pub protected: &'a [u32],
    /// The caller's uid: only processes of this very user are stopped.
    pub uid: u32,
    /// The caller's PID namespace: pids of entries written elsewhere mean other processes.
    pub pid_ns: Option<u64>,
}

/// Whether `p` is provably a snarf process of the caller: the same executable, the same
/// user, the same PID namespace, and not init.
fn ours(p: &ProcessInfo, sweep: &IdleSweep<'_>) -> bool {
    p.pid > 1
        && p.same_binary
        && p.uid == Some(sweep.uid)
        && sweep.pid_ns.is_some()
        && p.pid_ns == sweep.pid_ns
}

/// Whether a snarf command line runs a job (`snarf backup ...`): its first argument that is
/// not an option is `backup`. A mount daemon, `snarf pids` or a restore are never jobs.
pub fn is_job_cmdline(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "backup")
}

/// Decides which processes to stop; idle user jobs first, then helpers, each in pid order.
pub fn plan_stop_idle(sweep: &IdleSweep<'_>) -> Vec<Victim> {
    let parents: BTreeMap<u32, u32> = sweep.processes.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut untouchable = family(sweep.caller, &parents);
    untouchable.extend(sweep.protected.iter().copied());

    // "Older" means registered earlier, which is the order of the file; an unregistered
    // caller is newer than everyone.
    let older = sweep
        .entries
        .iter()
        .position(|e| e.pid == sweep.caller)
        .unwrap_or(sweep.entries.len());
    let mut victims: Vec<Victim> = sweep.entries[..older]
        .iter()
        .filter(|e| {
            e.kind == ProcType::User
                && e.state == ProcState::Idle
                && e.works_on(sweep.repo)
                && !untouchable.contains(&e.pid)
                && e.pid_ns.is_some()
                && e.pid_ns == sweep.pid_ns
                && sweep.processes.iter().any(|p| {
                    p.pid == e.pid
                        && p.start_time == e.start_time
                        && ours(p, sweep)
                        && is_job_cmdline(&p.cmdline)
                })
        })
        .map(|e| Victim {
            pid: e.pid,
            start_time: e.start_time,
            reason: StopReason::IdleUserJob,
        })
        .collect();
    victims.sort_by_key(|v| v.pid);
    victims.dedup_by_key(|v| v.pid);

    let stopping: BTreeSet<u32> = victims.iter().map(|v| v.pid).collect();
    let staying: BTreeSet<u32> = sweep
        .entries
        .iter()
        .filter(|e| !stopping.contains(&e.pid))
        .filter(|e| {
            // An entry accounts for a process only if it is that very incarnation.
            sweep
                .processes
                .iter()
                .any(|p| p.pid == e.pid && p.start_time == e.start_time)
        })
        .map(|e| e.pid)
        .collect();
    let mut helpers: Vec<Victim> = sweep
        .processes
        .iter()
        .filter(|p| {
            ours(p, sweep)
                && p.helper_of.as_deref() == Some(sweep.run_dir)
                && !looks_like_mount_daemon(&p.cmdline)
                && !untouchable.contains(&p.pid)
                && !stopping.contains(&p.pid)
                && !ancestry(p.pid, &parents).any(|a| staying.contains(&a))
        })
        .map(|p| Victim {
            pid: p.pid,
            start_time: p.start_time,
            reason: StopReason::Helper,
        })
        .collect();
    helpers.sort_by_key(|v| v.pid);
    victims.extend(helpers);
    victims
}

/// `pid`, its ancestors and its descendants, from a pid → parent map.
pub fn family(pid: u32, parents: &BTreeMap<u32, u32>) -> BTreeSet<u32> {
    let mut out: BTreeSet<u32> = ancestry(pid, parents).collect();
    // Descendants: repeat until no process's parent joins the set; a few passes suffice
    // for real trees, and the bound keeps a corrupt (cyclic) table from looping.
    let mut kids: BTreeSet<u32> = BTreeSet::from([pid]);
    for _ in 0..parents.len() {
        let before = kids.len();
        for (child, parent) in parents {
            if kids.contains(parent) {
                kids.insert(*child);
            }
        }
        if kids.len() == before {
            break;
        }
    }
    out.extend(kids);
    out
}

/// `pid` and then each parent up the tree, stopping at pid 0, an unknown pid or a cycle.
fn ancestry(pid: u32, parents: &BTreeMap<u32, u32>) -> impl Iterator<Item = u32> + '_ {
    let mut seen = BTreeSet::new();
    let mut next = Some(pid);
    std::iter::from_fn(move || {
        let cur = next.filter(|p| *p != 0 && seen.insert(*p))?;
        next = parents.get(&cur).copied();
        Some(cur)
    })
}

/// Whether a snarf command line is the mount daemon: its first non-option argument is
/// `mount`, or it was started as mount.snarf by mount(8).
pub fn looks_like_mount_daemon(cmdline: &[String]) -> bool {
    let program_is_helper = cmdline
        .first()
        .and_then(|p| Path::new(p).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("mount."));
    program_is_helper
        || cmdline
            .iter()
            .skip(1)
            .find(|a| !a.starts_with('-'))
            .is_some_and(|a| a == "mount")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pids::entry::tests::sample;
    use std::path::PathBuf;

    const RUN: &str = "/srv/store/run";
    const REPO: &str = "/srv/repo";
    const UID: u32 = 1000;
    const NS: u64 = 4026531836;

    fn entry(pid: u32, kind: ProcType, state: ProcState, repo: &str) -> Entry {
        Entry {
            kind,
            state,
            repo: repo.into(),
            ..sample(pid)
        }
    }

    /// A process for `e`, child of `ppid`, running snarf unmarked.
    fn proc_of(e: &Entry, ppid: u32) -> ProcessInfo {
        ProcessInfo {
            pid: e.pid,
            ppid,
            start_time: e.start_time,
            same_binary: true,
            uid: Some(UID),
            pid_ns: Some(NS),
            helper_of: None,
            cmdline: vec!["snarf".into(), "backup".into()],
        }
    }

    fn helper(pid: u32, ppid: u32, marker: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            start_time: 5,
            same_binary: true,
            uid: Some(UID),
            pid_ns: Some(NS),
            helper_of: marker.map(PathBuf::from),
            cmdline: vec!["/usr/bin/snarf".into(), "helper".into()],
        }
    }

    struct World {
        entries: Vec<Entry>,
        procs: Vec<ProcessInfo>,
        protected: Vec<u32>,
    }

    impl World {
        fn plan(&self, caller: u32) -> Vec<(u32, StopReason)> {
            plan_stop_idle(&IdleSweep {
                repo: REPO,
                run_dir: Path::new(RUN),
                caller,
                entries: &self.entries,
                processes: &self.procs,
                protected: &self.protected,
                uid: UID,
                pid_ns: Some(NS),
            })
            .into_iter()
            .map(|v| (v.pid, v.reason))
            .collect()
        }
    }

    /// pid 1 → shell 10 → caller 100 (a user job on REPO, registered last).
    fn world(entries: Vec<Entry>) -> World {
        let mut procs = vec![helper(1, 0, None), helper(10, 1, None)];
        procs[0].same_binary = false;
        procs[1].same_binary = false;
        procs.extend(entries.iter().map(|e| proc_of(e, 10)));
        let mut entries = entries;
        entries.push(entry(100, ProcType::User, ProcState::Idle, REPO));
        procs.push(proc_of(&entries[entries.len() - 1], 10));
        World {
            entries,
            procs,
            protected: vec![],
        }
    }

    #[test]
    fn stops_older_idle_user_job_on_same_repo_only() {
        let w = world(vec![
            entry(20, ProcType::User, ProcState::Idle, REPO),
            entry(21, ProcType::User, ProcState::Idle, "/srv/other"),
            entry(22, ProcType::User, ProcState::Running, REPO),
            entry(23, ProcType::User, ProcState::Finishing, REPO),
            entry(24, ProcType::User, ProcState::Idle, ""),
            entry(25, ProcType::User, ProcState::Idle, "/srv/repo/"),
        ]);
        assert_eq!(
            w.plan(100),
            vec![(20, StopReason::IdleUserJob), (25, StopReason::IdleUserJob)]
        );
    }

    #[test]
    fn cron_remote_and_sshpipe_are_never_touched() {
        let mut entries = Vec::new();
        for (i, kind) in [ProcType::Cron, ProcType::Remote, ProcType::Sshpipe]
            .into_iter()
            .enumerate()
        {
            for (j, state) in [ProcState::Idle, ProcState::Running, ProcState::Finishing]
                .into_iter()
                .enumerate()
            {
                entries.push(entry(30 + 3 * i as u32 + j as u32, kind, state, REPO));
            }
        }
        assert!(world(entries).plan(100).is_empty());
    }

    #[test]
    fn newer_jobs_are_left_to_stop_us_instead() {
        let mut w = world(vec![]);
        w.entries
            .push(entry(200, ProcType::User, ProcState::Idle, REPO));
        let e = w.entries[1].clone();
        w.procs.push(proc_of(&e, 10));
        assert!(w.plan(100).is_empty());
        // The newer one, in turn, stops us.
        assert_eq!(w.plan(200), vec![(100, StopReason::IdleUserJob)]);
    }

    #[test]
    fn unregistered_caller_counts_everyone_as_older() {
        let mut w = world(vec![entry(20, ProcType::User, ProcState::Idle, REPO)]);
        w.entries.pop();
        w.procs.push(helper(300, 10, None));
        assert_eq!(w.plan(300), vec![(20, StopReason::IdleUserJob)]);
    }

    #[test]
    fn caller_family_and_protected_pids_are_spared() {
        // An idle user entry that is the caller's parent or child, and one protected.
        let mut w = world(vec![
            entry(10, ProcType::User, ProcState::Idle, REPO),
            entry(40, ProcType::User, ProcState::Idle, REPO),
            entry(41, ProcType::User, ProcState::Idle, REPO),
        ]);
        w.procs.retain(|p| p.pid != 10 || p.ppid == 1);
        w.procs.iter_mut().find(|p| p.pid == 40).unwrap().ppid = 100;
        w.protected = vec![41];
        assert!(w.plan(100).is_empty());
    }

    #[test]
    fn leftover_helpers_of_this_store_only() {
        let mut w = world(vec![entry(50, ProcType::Cron, ProcState::Running, REPO)]);
        w.procs.extend([
            // Orphaned helper of this store: stopped.
            helper(60, 1, Some(RUN)),
            // Helper of another store: spared.
            helper(61, 1, Some("/other/store/run")),
            // Unmarked snarf process (say, `snarf pids` in another shell): spared.
            helper(62, 1, None),
            // Helper of the running cron job, and its grandchild: spared.
            helper(63, 50, Some(RUN)),
            helper(64, 63, Some(RUN)),
            // The caller's own helper: spared.
            helper(65, 100, Some(RUN)),
        ]);
        // A marked process that is a different binary: spared.
        let mut other = helper(66, 1, Some(RUN));
        other.same_binary = false;
        // A marked mount daemon: spared.
        let mut daemon = helper(67, 1, Some(RUN));
        daemon.cmdline = vec!["snarf".into(), "-v".into(), "mount".into()];
        w.procs.extend([other, daemon]);
        assert_eq!(w.plan(100), vec![(60, StopReason::Helper)]);
    }

    #[test]
    fn helpers_of_a_stopped_job_go_with_it() {
        let mut w = world(vec![entry(20, ProcType::User, ProcState::Idle, REPO)]);
        w.procs.push(helper(70, 20, Some(RUN)));
        assert_eq!(
            w.plan(100),
            vec![(20, StopReason::IdleUserJob), (70, StopReason::Helper)]
        );
    }

    #[test]
    fn a_registered_helper_with_a_reused_pid_is_not_accounted_for() {
        let mut w = world(vec![entry(80, ProcType::Cron, ProcState::Running, REPO)]);
        // Process 80 is now a different incarnation (new start time) marked as helper.
        let p = w.procs.iter_mut().find(|p| p.pid == 80).unwrap();
        p.start_time += 1;
        p.helper_of = Some(RUN.into());
        p.ppid = 1;
        assert_eq!(w.plan(100), vec![(80, StopReason::Helper)]);
    }

    #[test]
    fn only_provable_snarf_jobs_of_this_user_and_namespace_are_stopped() {
        let mut w = world(vec![
            entry(20, ProcType::User, ProcState::Idle, REPO),
            entry(21, ProcType::User, ProcState::Idle, REPO),
            entry(22, ProcType::User, ProcState::Idle, REPO),
            entry(23, ProcType::User, ProcState::Idle, REPO),
            entry(24, ProcType::User, ProcState::Idle, REPO),
            entry(25, ProcType::User, ProcState::Idle, REPO),
            entry(26, ProcType::User, ProcState::Idle, REPO),
            entry(27, ProcType::User, ProcState::Idle, REPO),
            entry(1, ProcType::User, ProcState::Idle, REPO),
        ]);
        fn p(w: &mut World, pid: u32) -> &mut ProcessInfo {
            w.procs.iter_mut().find(|p| p.pid == pid).unwrap()
        }
        // 21: `sleep 300` planted with its real start time.
        p(&mut w, 21).same_binary = false;
        p(&mut w, 21).cmdline = vec!["sleep".into(), "300".into()];
        // 22: another user's snarf job.
        p(&mut w, 22).uid = Some(0);
        // 23: a snarf job whose uids could not be read or disagree.
        p(&mut w, 23).uid = None;
        // 24: a snarf process in another PID namespace (its pid means something else here).
        p(&mut w, 24).pid_ns = Some(NS + 1);
        // 25: snarf, but not a job: the mount daemon, named in a planted entry.
        p(&mut w, 25).cmdline = vec!["snarf".into(), "mount".into(), "/s".into()];
        // 26: an entry written in another namespace, whatever process has that pid here.
        w.entries[6].pid_ns = Some(NS + 1);
        // 27: an entry of an older snarf, without a namespace: not provably ours.
        w.entries[7].pid_ns = None;
        // 1: init, even if it were snarf (a container whose init is snarf).
        p(&mut w, 1).same_binary = true;
        p(&mut w, 1).cmdline = vec!["snarf".into(), "backup".into()];
        assert_eq!(w.plan(100), vec![(20, StopReason::IdleUserJob)]);
    }

    #[test]
    fn helpers_must_be_provably_ours_too() {
        let mut w = world(vec![]);
        let mut other_user = helper(60, 1, Some(RUN));
        other_user.uid = Some(0);
        let mut other_ns = helper(61, 1, Some(RUN));
        other_ns.pid_ns = None;
        w.procs
            .extend([other_user, other_ns, helper(62, 1, Some(RUN))]);
        assert_eq!(w.plan(100), vec![(62, StopReason::Helper)]);
    }

    #[test]
    fn job_command_lines() {
        let cl = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_job_cmdline(&cl(&["snarf", "backup", "/m", "s"])));
        assert!(is_job_cmdline(&cl(&[
            "/usr/bin/snarf",
            "backup",
            "--repo=/r",
            "--",
            "/m",
            "s"
        ])));
        assert!(!is_job_cmdline(&cl(&["snarf", "mount", "/s", "/m"])));
        assert!(!is_job_cmdline(&cl(&["snarf", "pids", "backup"])));
        assert!(!is_job_cmdline(&cl(&["snarf"])));
        assert!(!is_job_cmdline(&cl(&[])));
    }

    #[test]
    fn mount_daemon_detection() {
        let cl = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(looks_like_mount_daemon(&cl(&[
            "snarf", "mount", "/s", "/m"
        ])));
        assert!(looks_like_mount_daemon(&cl(&["snarf", "-v", "mount"])));
        assert!(looks_like_mount_daemon(&cl(&[
            "/sbin/mount.snarf",
            "/s",
            "/m"
        ])));
        assert!(!looks_like_mount_daemon(&cl(&["snarf", "backup", "mount"])));
        assert!(!looks_like_mount_daemon(&cl(&[])));
    }

    #[test]
    fn family_survives_cycles() {
        let parents = BTreeMap::from([(2, 3), (3, 2), (4, 2), (5, 4)]);
        let f = family(2, &parents);
        assert_eq!(f, BTreeSet::from([2, 3, 4, 5]));
    }
}
