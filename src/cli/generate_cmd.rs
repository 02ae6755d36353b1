//! `snarf generate man DIR` and `snarf generate completions SHELL`: man pages and shell
//! completions made from the clap definitions (clap_mangen, clap_complete), and snarf(8),
//! the mount's page, made from the tables the mount itself parses (the mount options of
//! [`mount_options::OPTIONS`], the control files of [`ControlFile::ALL`] and their command
//! grammar), so nothing documented here can drift from what the code accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use roff::{bold, italic, roman, Inline, Roff};

use super::{mount_options, Cli, CliError, CliResult};
use crate::control::ControlFile;

/// Arguments of `snarf generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Write snarf(1), one page per subcommand (snarf-mount(1), ...) and snarf(8), the
    /// mount options and control files, into DIR.
    Man {
        /// The directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for a shell on stdout.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// Shells snarf writes completions for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `snarf generate`.
pub fn generate(args: GenerateArgs) -> CliResult {
    match args.what {
        What::Man { dir } => {
            let written = man_pages(&dir)?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        What::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "snarf", &mut out);
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| CliError::new(format!("cannot write the completions: {e}")))
        }
    }
}

/// Writes every page into `dir` and returns their paths.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let failed = |path: &Path, e: std::io::Error| {
        CliError::new(format!("cannot write the man page {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    let mut written = Vec::new();
    for page in pages {
        let man = clap_mangen::Man::new(page).manual("snarf manual");
        let path = dir.join(man.get_filename());
        let mut text = Vec::new();
        man.render(&mut text).map_err(|e| failed(&path, e))?;
        std::fs::write(&path, text).map_err(|e| failed(&path, e))?;
        written.push(path);
    }
    let path = dir.join("snarf.8");
    std::fs::write(&path, mount_page()).map_err(|e| failed(&path, e))?;
    written.push(path);
    Ok(written)
}

/// `cmd` and all its visible subcommands, depth first.
fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

fn paragraph(roff: &mut Roff, inlines: impl Into<Vec<Inline>>) {
    roff.control("PP", []);
    roff.text(inlines);
}

/// A tagged paragraph: `tag` in bold, then `body`.
fn item(roff: &mut Roff, tag: Vec<Inline>, body: impl Into<Vec<Inline>>) {
    roff.control("TP", []);
    roff.text(tag);
    roff.text(body);
}

/// snarf(8): the mount options, fstab, the tree under the mount and the control files.
pub fn mount_page() -> String {
    let mut r = Roff::new();
    let version = env!("CARGO_PKG_VERSION");
    r.control(
        "TH",
        [
            "snarf",
            "8",
            // No date (the page is the same for a given version); written as "" so the
            // arguments after it keep their places.
            "\"\"",
            &format!("snarf {version}"),
            "snarf manual",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "snarf - the snarf mount: mount options, fstab, and the files under the mount",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([
        bold("mount -t fuse.snarf "),
        italic("STORE MOUNTPOINT"),
        bold(" -o "),
        italic("OPTION[,OPTION...]"),
    ]);
    r.text([line_break()]);
    r.text([
        bold("snarf mount "),
        italic("STORE MOUNTPOINT"),
        bold(" -o "),
        italic("OPTION[,OPTION...]"),
    ]);
    r.text([line_break()]);
    r.text([
        italic("STORE MOUNTPOINT"),
        bold(" fuse.snarf "),
        italic("OPTION[,OPTION...]"),
        roman(" 0 0    (in /etc/fstab)"),
    ]);
    r.control("SH", ["DESCRIPTION"]);
    paragraph(
        &mut r,
        [roman(
            "A snarf mount shows a store of live block volumes. mount(8) runs the helper \
             mount.fuse.snarf, which hands the options to snarf mount -o; the daemon returns \
             once the mount is ready and logs to STORE/snarf.log. umount(8) or snarf umount \
             ends it cleanly.",
        )],
    );
    item(
        &mut r,
        vec![bold("live/")],
        [roman(
            "The volumes, read and written like files (mode 0600, the mount owner's). \
             truncate creates or resizes, rm deletes, mv renames.",
        )],
    );
    item(
        &mut r,
        vec![bold("snapshots/")],
        [roman(
            "mkdir snapshots/NAME takes an instant, frozen snapshot of every volume; rmdir \
             releases it. Each snapshot directory holds read-only files, one per volume.",
        )],
    );
    item(
        &mut r,
        vec![bold("backups/")],
        [roman(
            "The committed backups of the mount's repository, read-only, one directory per \
             backup.",
        )],
    );
    item(
        &mut r,
        vec![bold("control/")],
        [roman("The control files (see CONTROL FILES).")],
    );
    r.control("SH", ["OPTIONS"]);
    paragraph(
        &mut r,
        [roman(
            "Every number is range-checked before anything starts; a bad value is refused \
             with the option's name and its range. An option given with -o overrides the \
             same flag of snarf mount.",
        )],
    );
    for o in mount_options::OPTIONS {
        let mut tag = vec![bold(o.name)];
        if let Some(v) = o.value {
            tag.push(bold("="));
            tag.push(italic(v));
        }
        item(
            &mut r,
            tag,
            [roman(format!("{} Same as snarf mount {}.", o.help, o.flag))],
        );
    }
    paragraph(
        &mut r,
        [roman(format!(
            "Generic mount options are accepted and left to mount(8): {}. ro is refused: {}.",
            mount_options::GENERIC.join(", "),
            mount_options::READ_WRITE_ONLY
        ))],
    );
    r.control("SH", ["CONTROL FILES"]);
    paragraph(
        &mut r,
        [roman(
            "Files under control/ are read with cat. The files that take commands are \
             transaction files: one write carries one command on one line; a bad command \
             fails the write(2) with EINVAL, and the reason (or a good command's answer, \
             such as a job id) is read back on the same open file. Only the mount's owner \
             or root may write them. Words are split on spaces; \"...\" or '...' quote a \
             word that holds spaces.",
        )],
    );
    for f in ControlFile::ALL {
        let mut body = vec![roman(f.summary())];
        if f.is_writable() {
            body.push(roman(if f.takes_commands() {
                " Commands:"
            } else {
                " Lines:"
            }));
            for line in f.usage().lines() {
                body.push(line_break());
                body.push(bold(line.to_string()));
            }
        }
        item(&mut r, vec![bold(format!("control/{}", f.name()))], body);
    }
    r.control("SH", ["EXAMPLES"]);
    for line in [
        "mount -t fuse.snarf /srv/store /mnt/snarf -o threads=8,preimage_mem=512M",
        "/srv/store  /mnt/snarf  fuse.snarf  defaults,preimage_disk=20G,_netdev  0  0",
        "echo \"create nightly\" > /mnt/snarf/control/snapshot",
        "echo \"backup nightly\" > /mnt/snarf/control/jobs",
        "cat /mnt/snarf/control/status",
    ] {
        paragraph(&mut r, [bold(line)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "snarf(1), snarf-mount(1), snarf-umount(1), snarf-backup(1), mount(8), fstab(5)",
    )]);
    r.render()
}

fn line_break() -> Inline {
    roff::line_break()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_page_names_every_option_and_control_file_and_its_commands() {
        // roff writes every '-' as "\-"; read the page as text.
        let page = mount_page().replace("\\-", "-");
        for o in mount_options::OPTIONS {
            assert!(page.contains(o.name), "{} missing", o.name);
            assert!(page.contains(o.flag), "{} missing", o.flag);
        }
        for f in ControlFile::ALL {
            assert!(page.contains(&format!("control/{}", f.name())), "{f}");
        }
        for word in [
            "create",
            "release",
            "backup",
            "cancel",
            "mode=full|incremental|auto",
        ] {
            assert!(page.contains(word), "{word} missing");
        }
    }

    #[test]
    fn one_page_per_visible_subcommand_and_snarf_8() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "snarf.1",
            "snarf-mount.1",
            "snarf-repo-init.1",
            "snarf-repair-index.1",
            "snarf-generate-man.1",
            "snarf.8",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("snarf-help")),
            "{names:?}"
        );
        let top = Cli::command();
        for sub in top.get_subcommands() {
            let page = format!("snarf-{}.1", sub.get_name());
            assert!(names.contains(&page), "{page} missing");
        }
    }
}
