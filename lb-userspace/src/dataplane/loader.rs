//! Loads the kernel object with its maps pinned under the bpffs directory
//! (reusing existing pins, so state survives an agent restart).
use std::path::{Path, PathBuf};

use aya::{programs::SchedClassifier, Ebpf, EbpfLoader};
use lb_common::{ALL_MAPS, PROG_TC_INGRESS};

use super::{
    attach::Attachments,
    maps::{Maps, MapsError},
    sync::{plan, Programmed},
};
use crate::translate::Desired;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating bpffs directory {path}: {source} (is bpffs mounted at /sys/fs/bpf?)")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("planning map updates: {0}")]
    Plan(#[from] super::sync::PlanError),
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The tc program of a loaded object.
pub fn tc_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(PROG_TC_INGRESS)
        .and_then(|p| p.try_into().ok())
        .expect("the tc program is part of the object and loaded in Dataplane::finish")
}

/// Loaded programs and maps, the devices they are attached to, and what the maps hold.
pub struct Dataplane {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub attachments: Attachments,
    programmed: Programmed,
}

/// Result of one sync: how many map operations were applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub ops: usize,
    pub frontends: usize,
}

impl Dataplane {
    /// Loads the object, pinning (or reusing) the maps under `bpffs`, and
    /// restores what the maps already hold.
    pub fn load(bpffs: &Path) -> Result<Self, LoadError> {
        std::fs::create_dir_all(bpffs).map_err(|source| LoadError::PinDir {
            path: bpffs.into(),
            source,
        })?;
        let stat = nix::sys::statfs::statfs(bpffs).map_err(|e| LoadError::PinDir {
            path: bpffs.into(),
            source: e.into(),
        })?;
        if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(LoadError::NotBpffs { path: bpffs.into() });
        }
        let pins: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|n| (*n, bpffs.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        Self::finish(loader.load(crate::EBPF_OBJECT)?)
    }

    /// Loads the object with private, unpinned maps (packet tests, benchmarks).
    pub fn load_unpinned() -> Result<Self, LoadError> {
        Self::finish(EbpfLoader::new().load(crate::EBPF_OBJECT)?)
    }

    fn finish(mut ebpf: Ebpf) -> Result<Self, LoadError> {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_INGRESS)
            .ok_or(LoadError::Program {
                name: PROG_TC_INGRESS,
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| LoadError::Program {
                name: PROG_TC_INGRESS,
                source,
            })?;
        prog.load().map_err(|source| LoadError::Program {
            name: PROG_TC_INGRESS,
            source,
        })?;
        let maps = Maps::take(&mut ebpf)?;
        let programmed = maps.read();
        Ok(Self {
            ebpf,
            maps,
            attachments: Attachments::default(),
            programmed,
        })
    }

    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// Brings the maps to `desired`. On a failed write the maps are re-read,
    /// so that the next sync plans from what they really hold.
    pub fn sync(&mut self, desired: &Desired) -> Result<SyncStats, LoadError> {
        let (ops, next) = plan(&self.programmed, desired)?;
        for op in &ops {
            if let Err(e) = self.maps.apply(op) {
                self.programmed = self.maps.read();
                return Err(e.into());
            }
        }
        self.programmed = next;
        Ok(SyncStats {
            ops: ops.len(),
            frontends: desired.frontends.len(),
        })
    }
}
