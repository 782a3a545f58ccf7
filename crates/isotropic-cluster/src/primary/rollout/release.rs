//! Releases: what each generation of workers runs. A rolling restart begins
//! a new release, which finds the program anew (a deploy may have replaced
//! it); each release holds its program file open, so that its workers can
//! still be started (a rollback, a replacement) once a deploy has replaced
//! the file on disk.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::sys::HeldFile;

/// One release of the workers' program.
#[derive(Debug)]
pub(crate) struct Release {
    generation: u64,
    /// The program, as found when the release began.
    program: PathBuf,
    /// Its file as the primary reaches it (a relative path is the
    /// workers', from their directory).
    file: PathBuf,
    /// Its file, held open (`None` when it could not be opened, or workers
    /// run as another user, who could not reach it through `/proc`).
    held: Option<HeldFile>,
}

impl Release {
    /// Release `generation` of `program` (a path, relative to the workers'
    /// directory `dir` if set, or a name looked up in `search`, a `PATH`),
    /// its file held open if `hold`.
    pub(crate) fn new(
        generation: u64,
        program: &Path,
        search: Option<&OsStr>,
        dir: Option<&Path>,
        hold: bool,
    ) -> Self {
        let program = find(program, search);
        let file = match dir {
            Some(dir) if program.components().count() > 1 => dir.join(&program),
            _ => program.clone(),
        };
        let held = hold.then(|| HeldFile::open(&file).ok()).flatten();
        Self {
            generation,
            program,
            file,
            held,
        }
    }

    /// Its generation: 1 for the first release of a primary, then 2, 3, …
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The program as found when the release began.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The path to execute: the program's, or the held file's once a deploy
    /// replaced the program on disk.
    pub(crate) fn exec_path(&self) -> Cow<'_, Path> {
        match &self.held {
            Some(held) if !held.is_at(&self.file) => Cow::Owned(held.proc_path()),
            _ => Cow::Borrowed(&self.program),
        }
    }
}

/// `program` itself if it is a path; else the first executable file of that
/// name in `search`'s directories (as the shell finds a command), or the name
/// as it is when there is none (starting it then fails as usual).
fn find(program: &Path, search: Option<&OsStr>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    if program.components().count() > 1 || search.is_none() {
        return program.to_owned();
    }
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::split_paths(search.unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .unwrap_or_else(|| program.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_on_the_search_path_and_a_path_is_kept() {
        let search = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = find(Path::new("sh"), Some(search));
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(find(Path::new("./sh"), Some(search)), Path::new("./sh"));
        assert_eq!(
            find(Path::new("no-such-command"), Some(search)),
            Path::new("no-such-command")
        );
    }

    #[test]
    fn a_relative_program_is_held_from_the_workers_directory() {
        let dir = std::env::temp_dir().join(format!("release-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        std::fs::write(dir.join("server"), "v1").expect("v1");
        let program = Path::new("./server");
        let v1 = Release::new(1, program, None, Some(&dir), true);
        assert_eq!(v1.exec_path(), program, "unchanged: run by its own path");
        std::fs::write(dir.join("next"), "v2").expect("v2");
        std::fs::rename(dir.join("next"), dir.join("server")).expect("the deploy");
        assert_eq!(
            std::fs::read_to_string(v1.exec_path()).ok().as_deref(),
            Some("v1")
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_deploy_that_switches_a_symlink_is_picked_up_and_the_old_target_kept() {
        let dir = std::env::temp_dir().join(format!("release-link-{}", std::process::id()));
        for version in ["v1", "v2"] {
            std::fs::create_dir_all(dir.join(version)).expect("a release directory");
            std::fs::write(dir.join(version).join("server"), version).expect("its program");
        }
        let current = dir.join("current");
        std::os::unix::fs::symlink("v1", &current).expect("current -> v1");
        let program = current.join("server");
        let v1 = Release::new(1, &program, None, None, true);
        // The deploy: `current` names v2 at once, and v1 is deleted.
        std::os::unix::fs::symlink("v2", dir.join("next")).expect("next -> v2");
        std::fs::rename(dir.join("next"), &current).expect("the switch");
        std::fs::remove_dir_all(dir.join("v1")).expect("v1 deleted");
        let v2 = Release::new(2, &program, None, None, true);
        assert_eq!(v2.exec_path(), program, "the new target, by its path");
        let read = |release: &Release| std::fs::read_to_string(release.exec_path()).ok();
        assert_eq!(read(&v2).as_deref(), Some("v2"));
        assert_eq!(read(&v1).as_deref(), Some("v1"), "the old target, held");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_release_runs_its_own_program_after_a_deploy_replaced_it() {
        let dir = std::env::temp_dir().join(format!("release-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let program = dir.join("server");
        std::fs::write(&program, "v1").expect("v1");
        let v1 = Release::new(1, &program, None, None, true);
        assert_eq!(v1.exec_path(), program, "unchanged: run by its own path");
        std::fs::write(dir.join("next"), "v2").expect("v2");
        std::fs::rename(dir.join("next"), &program).expect("the deploy");
        let v2 = Release::new(2, &program, None, None, true);
        assert_eq!(v2.exec_path(), program);
        assert_eq!(
            std::fs::read_to_string(v1.exec_path()).ok().as_deref(),
            Some("v1")
        );
        let unheld = Release::new(3, &dir.join("missing"), None, None, true);
        assert_eq!(unheld.exec_path(), dir.join("missing"), "nothing to hold");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
