//! The two bpf(2) commands the per-packet benchmark needs directly:
//! loading a no-op program (`r0 = verdict; exit`, two instructions) to
//! measure what BPF_PROG_TEST_RUN itself costs, and running any program
//! through BPF_PROG_TEST_RUN with the same code, so that Weir's programs and
//! the no-op are timed identically.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum RawBpfError {
    #[error("BPF_PROG_LOAD of the no-op {kind} program: {source}")]
    Load {
        kind: &'static str,
        source: std::io::Error,
    },
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(std::io::Error),
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Program types with a packet test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    /// BPF_PROG_TYPE_SCHED_CLS (tc), returning TC_ACT_OK.
    Tc,
    /// BPF_PROG_TYPE_XDP, returning XDP_PASS.
    Xdp,
}

impl ProgKind {
    fn prog_type(self) -> u32 {
        match self {
            ProgKind::Tc => 3,
            ProgKind::Xdp => 6,
        }
    }

    /// What the no-op returns: TC_ACT_OK (0) or XDP_PASS (2).
    fn verdict(self) -> i32 {
        match self {
            ProgKind::Tc => 0,
            ProgKind::Xdp => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProgKind::Tc => "tc",
            ProgKind::Xdp => "xdp",
        }
    }
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields used (the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 12],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Loads `r0 = verdict; exit`.
pub fn load_noop(kind: ProgKind) -> Result<OwnedFd, RawBpfError> {
    // mov64 r0, imm (0xb7) and exit (0x95): struct bpf_insn is 8 bytes each.
    let mut insns = [0u64; 2];
    insns[0] = 0xb7 | ((kind.verdict() as u32 as u64) << 32);
    insns[1] = 0x95;
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"weir_noop");
    let attr = ProgLoadAttr {
        prog_type: kind.prog_type(),
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: attr points at valid memory of the size passed; the kernel
    // reads the instructions and license during the call only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(RawBpfError::Load {
            kind: kind.name(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN: the program's return value and the kernel's
/// measured time per repetition in ns (the packet is set up once; with
/// `repeat` > 1 every repetition sees what the previous one left in it).
pub fn test_run(
    prog: BorrowedFd<'_>,
    packet: &[u8],
    out: &mut [u8],
    repeat: u32,
) -> Result<(u32, u32), RawBpfError> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: the buffers outlive the call and their sizes are passed along.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if r < 0 {
        return Err(RawBpfError::TestRun(std::io::Error::last_os_error()));
    }
    Ok((attr.retval, attr.duration))
}
