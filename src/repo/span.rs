//! Reading a byte range of a stored volume one snarf at a time: the same walk for both
//! repository formats, which differ only in how one snarf is fetched.

use std::ops::Deref;

use super::Result;

/// Fills `buf` from `offset` of a volume of `size` bytes cut into snarfs of `snarf_size`,
/// asking `read_snarf` for each snarf it touches (`None`: all zeros); returns the count
/// (0 at the end of the volume).
pub(crate) fn read_at<D>(
    size: u64,
    snarf_size: u32,
    offset: u64,
    buf: &mut [u8],
    mut read_snarf: impl FnMut(u64) -> Result<Option<D>>,
) -> Result<usize>
where
    D: Deref,
    D::Target: AsRef<[u8]>,
{
    if offset >= size {
        return Ok(0);
    }
    let want = buf.len().min((size - offset) as usize);
    let ss = u64::from(snarf_size);
    let mut done = 0;
    while done < want {
        let pos = offset + done as u64;
        let snarf = pos / ss;
        let within = (pos % ss) as usize;
        let n = (want - done).min(ss as usize - within);
        let out = &mut buf[done..done + n];
        match read_snarf(snarf)? {
            None => out.fill(0),
            Some(d) => out.copy_from_slice(&(*d).as_ref()[within..within + n]),
        }
        done += n;
    }
    Ok(done)
}

/// The first offset at or after `offset` in a hole (lseek SEEK_HOLE) of a volume of `size`
/// bytes and `snarfs` snarfs of `snarf_size`, asking `is_zero` snarf by snarf; the volume
/// size if no hole follows (the end counts as a hole, as in lseek).
pub(crate) fn seek_hole(
    size: u64,
    snarf_size: u32,
    snarfs: u64,
    offset: u64,
    mut is_zero: impl FnMut(u64) -> Result<bool>,
) -> Result<u64> {
    let ss = u64::from(snarf_size);
    for s in offset / ss..snarfs {
        if is_zero(s)? {
            return Ok(offset.max(s * ss));
        }
    }
    Ok(size.max(offset))
}
