//! One process owns a volume at a time: an exclusive `flock` on `VOLUME/lock`, held for the process's life. The
//! kernel drops it when the process dies, so a crash never leaves a stale lock. The holder's pid is written into
//! the file for the error message of whoever is refused.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{QsfsError, Result};

pub struct VolumeLock {
    _file: Flock<File>,
}

impl VolumeLock {
    pub fn acquire(volume: &Path) -> Result<VolumeLock> {
        let path = volume.join("lock");
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| QsfsError::io(format!("opening {}", path.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                let pid = std::process::id().to_string();
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = locked.write_all(pid.as_bytes());
                Ok(VolumeLock { _file: locked })
            }
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(QsfsError::VolumeLocked {
                    path: volume.to_path_buf(),
                    pid: if pid.trim().is_empty() {
                        "unknown".into()
                    } else {
                        pid.trim().to_string()
                    },
                })
            }
        }
    }
}
