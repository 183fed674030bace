//! Reads the members of a tar stream the way Go's `archive/tar` does, the reader containerd
//! applies layers with, so that a layer builds to the tree containerd would unpack:
//!
//! * a header is V7, USTAR/PAX, STAR or GNU by its magic; its checksum may be the signed or
//!   the unsigned sum; a numeric field is octal (leading and trailing spaces and NULs
//!   ignored, an empty field reads 0) or base-256; a zero block ends the stream (a second
//!   one, or the end of the stream, must follow it);
//! * GNU long names (`L`, `K`) and PAX headers (`x`) describe the next member; of several,
//!   the last wins (a later PAX header replaces an earlier one as a whole, as Go does); a
//!   long name overrides the PAX `path` and `linkpath`; a PAX global header (`g`) is
//!   returned as a member of its own and drops what was pending;
//! * links, symlinks, devices, directories and fifos have no data section, whatever their
//!   size field says;
//! * GNU sparse files, old (`S`, with extension blocks) and PAX 0.0, 0.1 and 1.0, come out
//!   as their real name and size with a list of data segments; everything else of them is
//!   a hole.
//!
//! Every count and size is checked before anything is allocated from it.

use std::io::Read;

/// Size of a tar block.
pub const BLOCK_BYTES: usize = 512;
/// Largest data section of a GNU long name or a PAX header (Go's `maxSpecialFileSize`).
pub const MAX_SPECIAL_FILE_BYTES: u64 = 1 << 20;
/// Most entries a sparse map may hold.
pub const MAX_SPARSE_ENTRIES: u64 = 1 << 20;

/// PAX records in the order of their first appearance, each key once.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Type flags.
pub mod typeflag {
    /// Regular file (also `\0`, the old form, turned into this or a directory).
    pub const REG: u8 = b'0';
    /// Hardlink.
    pub const LINK: u8 = b'1';
    /// Symlink.
    pub const SYMLINK: u8 = b'2';
    /// Character device.
    pub const CHAR: u8 = b'3';
    /// Block device.
    pub const BLOCK: u8 = b'4';
    /// Directory.
    pub const DIR: u8 = b'5';
    /// Fifo.
    pub const FIFO: u8 = b'6';
    /// Contiguous file.
    pub const CONT: u8 = b'7';
    /// PAX header of the next member.
    pub const PAX: u8 = b'x';
    /// PAX global header.
    pub const PAX_GLOBAL: u8 = b'g';
    /// GNU long name of the next member.
    pub const GNU_LONG_NAME: u8 = b'L';
    /// GNU long link target of the next member.
    pub const GNU_LONG_LINK: u8 = b'K';
    /// GNU old sparse file.
    pub const GNU_SPARSE: u8 = b'S';
}

/// Why a member could not be read.
#[derive(Debug)]
pub enum TarError {
    /// The stream failed or ended inside a header or a data section.
    Io(std::io::Error),
    /// A header is invalid. `member` is the name known so far (none before the member's own
    /// header is read), `offset` the stream offset of the header at fault.
    Header { offset: u64, member: Option<Vec<u8>>, detail: String },
}

/// One piece of a sparse file that holds data; the rest of the file is holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub length: u64,
}

/// One member, with the extension headers before it applied.
#[derive(Clone, Debug, Default)]
pub struct Member {
    /// Stream offset of the member's own header.
    pub offset: u64,
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub devmajor: i64,
    pub devminor: i64,
    /// Size of the file as extracted (the real size of a sparse file).
    pub size: u64,
    /// Bytes of the data section (for a sparse file, the segments' data).
    pub data_len: u64,
    /// `SCHILY.xattr.*` records: name and value, each name once (the last record wins).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data segments of a sparse file, in order, none empty, none overlapping.
    pub sparse: Option<Vec<Segment>>,
    /// Why the size is negative, if it is (an error unless the type has no data).
    negative_size: Option<&'static str>,
}

/// The stream as the reader sees it: counts what it reads, and when the stream ends cleanly
/// (not with an error) inside a 512-byte block after every byte the last member declared,
/// supplies the zeros of that block. Some writers (umoci 0.4's `insert`) end a layer without
/// padding its last member; containerd and GNU tar read such layers. Only padding is made
/// up, never a missing data byte, so a file cut short is still an error.
pub struct PadLastBlock<R> {
    inner: R,
    pos: u64,
    /// Where the current member's data ends in the stream.
    data_end: u64,
    padded: bool,
    pad_left: usize,
}

impl<R: Read> PadLastBlock<R> {
    /// True once zeros were supplied.
    pub fn padded(&self) -> bool {
        self.padded
    }
}

impl<R: Read> Read for PadLastBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pad_left == 0 {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos.is_multiple_of(BLOCK_BYTES as u64)
                || self.pos < self.data_end
                || self.padded
            {
                return Ok(0);
            }
            self.pad_left = BLOCK_BYTES - (self.pos % BLOCK_BYTES as u64) as usize;
            self.padded = true;
        }
        let n = self.pad_left.min(buf.len());
        buf[..n].fill(0);
        self.pad_left -= n;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Header formats, as Go tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    V7,
    UstarPax,
    Star,
    Gnu,
}

/// Reads members one after another.
pub struct TarReader<R> {
    r: PadLastBlock<R>,
    /// Data bytes of the current member not read yet.
    remaining: u64,
    /// Padding after the current member's data.
    pad: u64,
    done: bool,
}

/// The extension headers read before a member.
#[derive(Default)]
struct Pending {
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// Why the last PAX header is invalid, its offset and name: reported with the member it
    /// describes, or with the header itself if the archive ends before one.
    pax_error: Option<(String, u64, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl<R: Read> TarReader<R> {
    /// A reader at the start of `r`.
    pub fn new(r: R) -> Self {
        TarReader {
            r: PadLastBlock { inner: r, pos: 0, data_end: 0, padded: false, pad_left: 0 },
            remaining: 0,
            pad: 0,
            done: false,
        }
    }

    /// The stream after the end of the archive (to read it to its end).
    pub fn into_inner(self) -> PadLastBlock<R> {
        self.r
    }

    /// Reads the next member's headers; `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut pending = Pending::default();
        loop {
            self.skip_rest()?;
            let offset = self.r.pos;
            let Some(block) = self.read_header_block()? else {
                self.done = true;
                if let Some((detail, offset, name)) = pending.pax_error {
                    return Err(TarError::Header { offset, member: Some(name), detail });
                }
                return Ok(None);
            };
            let bad = |member: Option<&[u8]>, detail: String| TarError::Header {
                offset,
                member: member.map(<[u8]>::to_vec),
                detail,
            };
            let mut m = parse_header(&block).map_err(|d| bad(None, d))?;
            m.offset = offset;
            self.start_data(&m).map_err(|d| bad(Some(&m.name), d))?;
            match m.typeflag {
                typeflag::PAX | typeflag::PAX_GLOBAL => {
                    let data = self.read_special(&m)?;
                    (pending.pax, pending.pax_error) = match parse_pax(&data) {
                        Ok(pax) => (pax, None),
                        Err(e) if m.typeflag == typeflag::PAX => {
                            (Vec::new(), Some((e, offset, m.name.clone())))
                        }
                        Err(e) => return Err(bad(Some(&m.name), e)),
                    };
                    if m.typeflag == typeflag::PAX_GLOBAL {
                        // Go applies none of it to later members (nor checks it).
                        return Ok(Some(m));
                    }
                }
                typeflag::GNU_LONG_NAME => {
                    pending.long_name = Some(until_nul(&self.read_special(&m)?).to_vec())
                }
                typeflag::GNU_LONG_LINK => {
                    pending.long_link = Some(until_nul(&self.read_special(&m)?).to_vec())
                }
                _ => {
                    if let Some((e, _, _)) = pending.pax_error {
                        return Err(bad(Some(&m.name), e));
                    }
                    self.finish_member(&mut m, &block, &pending).map_err(|e| match e {
                        TarError::Header { offset, member: None, detail } => {
                            TarError::Header { offset, member: Some(m.name.clone()), detail }
                        }
                        e => e,
                    })?;
                    return Ok(Some(m));
                }
            }
        }
    }

    /// Applies the pending extension headers to a member and reads its sparse map.
    fn finish_member(
        &mut self,
        m: &mut Member,
        block: &[u8; BLOCK_BYTES],
        pending: &Pending,
    ) -> Result<(), TarError> {
        let offset = m.offset;
        let bad = |detail: String| TarError::Header { offset, member: None, detail };
        merge_pax(m, &pending.pax).map_err(bad)?;
        if let Some(n) = pending.long_name.as_ref().filter(|n| !n.is_empty()) {
            m.name = n.clone();
        }
        if let Some(l) = pending.long_link.as_ref().filter(|l| !l.is_empty()) {
            m.link = l.clone();
        }
        if m.typeflag == 0 {
            m.typeflag = if m.name.ends_with(b"/") { typeflag::DIR } else { typeflag::REG };
        }
        // The PAX size may differ from the header's.
        self.start_data(m).map_err(bad)?;
        m.data_len = self.remaining;
        let segments = if m.typeflag == typeflag::GNU_SPARSE {
            Some(self.old_gnu_sparse_map(m, block)?)
        } else {
            self.pax_sparse_map(m, &pending.pax)?
        };
        if let Some(segments) = segments {
            if header_only(m.typeflag) {
                return Err(bad("a sparse map on an entry type without data".into()));
            }
            let data = check_segments(&segments, m.size).map_err(bad)?;
            if data != self.remaining {
                return Err(bad(format!(
                    "the sparse map lists {data} bytes of data, the entry holds {}",
                    self.remaining
                )));
            }
            m.data_len = data;
            m.sparse = Some(segments.into_iter().filter(|s| s.length > 0).collect());
        }
        Ok(())
    }

    /// Sets up the data section of a member just read: its size, its padding.
    fn start_data(&mut self, m: &Member) -> Result<(), String> {
        let n = if header_only(m.typeflag) { 0 } else { m.size };
        if let Some(why) = m.negative_size.filter(|_| !header_only(m.typeflag)) {
            return Err(why.into());
        }
        if n > i64::MAX as u64 {
            return Err("size does not fit 63 bits".into());
        }
        self.remaining = n;
        self.pad = (BLOCK_BYTES as u64 - n % BLOCK_BYTES as u64) % BLOCK_BYTES as u64;
        self.r.data_end = self.r.pos.saturating_add(n);
        Ok(())
    }

    /// Skips what is left of the current data section and its padding.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.remaining + self.pad;
        let got = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(TarError::Io)?;
        if got < n {
            return Err(TarError::Io(eof(n - got)));
        }
        self.remaining = 0;
        self.pad = 0;
        Ok(())
    }

    /// Reads one header block; `None` at the end of the archive (the stream's end, or a
    /// zero block followed by the stream's end or a second zero block).
    fn read_header_block(&mut self) -> Result<Option<[u8; BLOCK_BYTES]>, TarError> {
        let offset = self.r.pos;
        let mut block = [0u8; BLOCK_BYTES];
        if !self.read_block(&mut block)? {
            return Ok(None);
        }
        if block.iter().any(|&b| b != 0) {
            return Ok(Some(block));
        }
        if !self.read_block(&mut block)? || block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        Err(TarError::Header {
            offset,
            member: None,
            detail: "a zero block (the end of the archive) is followed by a header".into(),
        })
    }

    /// Reads a whole block; false if the stream ends before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK_BYTES]) -> Result<bool, TarError> {
        let mut got = 0;
        while got < BLOCK_BYTES {
            match self.r.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Io(eof((BLOCK_BYTES - got) as u64))),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Reads the data of a long name or PAX header (at most [`MAX_SPECIAL_FILE_BYTES`]).
    fn read_special(&mut self, m: &Member) -> Result<Vec<u8>, TarError> {
        if self.remaining > MAX_SPECIAL_FILE_BYTES {
            return Err(TarError::Header {
                offset: m.offset,
                member: None,
                detail: format!(
                    "{} header of {} bytes, more than the {MAX_SPECIAL_FILE_BYTES} allowed",
                    char::from(m.typeflag),
                    self.remaining
                ),
            });
        }
        let mut data = vec![0u8; self.remaining as usize];
        self.read_data(&mut data)?;
        Ok(data)
    }

    /// Reads some of the current member's data section, at most `buf.len()` bytes; 0 at its
    /// end (or when `buf` is empty); an error when the stream ends before it.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => return Err(TarError::Io(eof(self.remaining))),
                Ok(n) => {
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }

    /// Reads exactly `buf.len()` bytes of the current member's data section.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        if buf.len() as u64 > self.remaining {
            return Err(TarError::Io(std::io::Error::other("read past the member's data")));
        }
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => return Err(TarError::Io(eof(self.remaining - got as u64))),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.remaining -= got as u64;
        Ok(())
    }

    /// The map of an old GNU sparse member: in its header, then in extension blocks.
    fn old_gnu_sparse_map(
        &mut self,
        m: &mut Member,
        block: &[u8; BLOCK_BYTES],
    ) -> Result<Vec<Segment>, TarError> {
        let offset = m.offset;
        let bad = |detail: String| TarError::Header { offset, member: None, detail };
        if format_of(block) != Some(Format::Gnu) {
            return Err(bad("a GNU sparse entry without a GNU header".into()));
        }
        let real = parse_numeric(&block[483..495]).map_err(bad)?;
        m.size = u64::try_from(real).map_err(|_| bad("negative sparse file size".into()))?;
        let mut segments = Vec::new();
        let mut area: Vec<u8> = block[386..483].to_vec();
        loop {
            let entries = area.len() / 24;
            for i in 0..entries {
                let e = &area[i * 24..i * 24 + 24];
                if e[0] == 0 {
                    break;
                }
                if segments.len() as u64 >= MAX_SPARSE_ENTRIES {
                    return Err(bad(format!(
                        "sparse map with more than {MAX_SPARSE_ENTRIES} entries"
                    )));
                }
                let o = parse_numeric(&e[..12]).map_err(bad)?;
                let l = parse_numeric(&e[12..24]).map_err(bad)?;
                segments.push(segment(o, l).map_err(bad)?);
            }
            if area[entries * 24] == 0 {
                return Ok(segments);
            }
            // The extension blocks come before the data and are not counted in its size.
            // No padding is made up for them.
            let mut ext = [0u8; BLOCK_BYTES];
            self.r.data_end = u64::MAX;
            if !self.read_block(&mut ext)? {
                return Err(TarError::Io(eof(BLOCK_BYTES as u64)));
            }
            self.r.data_end = self.r.pos.saturating_add(self.remaining);
            area = ext[..21 * 24 + 1].to_vec();
        }
    }

    /// The map of a PAX sparse member (GNU formats 0.0, 0.1 and 1.0), if it is one; sets
    /// its real name and size.
    fn pax_sparse_map(
        &mut self,
        m: &mut Member,
        pax: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Option<Vec<Segment>>, TarError> {
        let offset = m.offset;
        let bad = |detail: &str| TarError::Header { offset, member: None, detail: detail.into() };
        let get = |k: &[u8]| pax_get(pax, k).unwrap_or_default();
        let v1 = match (get(b"GNU.sparse.major"), get(b"GNU.sparse.minor")) {
            (b"0", b"0" | b"1") => false,
            (b"1", b"0") => true,
            (b"", b"") if !get(b"GNU.sparse.map").is_empty() => false,
            _ => return Ok(None),
        };
        if !get(b"GNU.sparse.name").is_empty() {
            m.name = get(b"GNU.sparse.name").to_vec();
        }
        let size = match get(b"GNU.sparse.size") {
            b"" => get(b"GNU.sparse.realsize"),
            s => s,
        };
        if !size.is_empty() {
            let n = parse_go_int(size).ok_or_else(|| bad("bad GNU.sparse.size"))?;
            m.size = u64::try_from(n).map_err(|_| bad("negative sparse file size"))?;
        }
        let pairs = if v1 { self.sparse_map_1_0(m)? } else { sparse_map_0_1(pax).map_err(bad)? };
        let segments = pairs.into_iter().map(|(o, l)| segment(o, l));
        segments.collect::<Result<_, _>>().map(Some).map_err(|d| bad(&d))
    }

    /// The map of a PAX 1.0 sparse member: decimal lines at the start of its data, the
    /// entry count first, in whole blocks.
    fn sparse_map_1_0(&mut self, m: &Member) -> Result<Vec<(i64, i64)>, TarError> {
        let offset = m.offset;
        let bad = |detail: String| TarError::Header { offset, member: None, detail };
        let mut text: Vec<u8> = Vec::new();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut want = 1u64;
        let mut count: Option<u64> = None;
        loop {
            while let Some(nl) = text.iter().position(|&b| b == b'\n') {
                if lines.len() as u64 == want {
                    break;
                }
                lines.push(text[..nl].to_vec());
                text.drain(..=nl);
                if count.is_none() {
                    let n = parse_go_int(&lines[0])
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| bad("bad entry count in the sparse map".into()))?;
                    // Each entry takes at least 4 bytes ("0\n0\n") of the data section.
                    if n > MAX_SPARSE_ENTRIES || n * 4 > self.remaining + text.len() as u64 {
                        return Err(bad(format!(
                            "sparse map claims {n} entries, more than the entry can hold"
                        )));
                    }
                    count = Some(n);
                    want = 1 + 2 * n;
                    lines.reserve(2 * n as usize);
                }
            }
            if lines.len() as u64 == want {
                break;
            }
            let mut block = [0u8; BLOCK_BYTES];
            if self.remaining < BLOCK_BYTES as u64 {
                return Err(TarError::Io(eof(BLOCK_BYTES as u64 - self.remaining)));
            }
            self.read_data(&mut block)?;
            text.extend_from_slice(&block);
        }
        lines[1..]
            .chunks(2)
            .map(|p| match (parse_go_int(&p[0]), parse_go_int(&p[1])) {
                (Some(o), Some(l)) => Ok((o, l)),
                _ => Err(bad("bad number in the sparse map".into())),
            })
            .collect()
    }
}

/// The map of a PAX 0.0 or 0.1 sparse member, from its records.
fn sparse_map_0_1(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<(i64, i64)>, &'static str> {
    let n = pax_get(pax, b"GNU.sparse.numblocks")
        .and_then(parse_go_int)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("bad GNU.sparse.numblocks")?;
    let map = pax_get(pax, b"GNU.sparse.map").unwrap_or_default();
    let fields: Vec<&[u8]> =
        if map.is_empty() { Vec::new() } else { map.split(|&b| b == b',').collect() };
    if fields.len() as u64 != n.saturating_mul(2) {
        return Err("GNU.sparse.map does not hold GNU.sparse.numblocks entries");
    }
    fields
        .chunks(2)
        .map(|p| match (parse_go_int(p[0]), parse_go_int(p[1])) {
            (Some(o), Some(l)) => Ok((o, l)),
            _ => Err("bad number in GNU.sparse.map"),
        })
        .collect()
}

/// A sparse map entry from its numbers.
fn segment(offset: i64, length: i64) -> Result<Segment, String> {
    if offset < 0 || length < 0 {
        return Err("negative offset or length in the sparse map".into());
    }
    Ok(Segment { offset: offset as u64, length: length as u64 })
}

/// Checks that segments are in order, do not overlap and end within `size`; returns the
/// bytes of data they hold.
fn check_segments(segments: &[Segment], size: u64) -> Result<u64, String> {
    let mut end = 0u64;
    let mut data = 0u64;
    for s in segments {
        let s_end = s
            .offset
            .checked_add(s.length)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or("sparse map entry overflows")?;
        if s_end > size {
            return Err(format!("sparse map entry ends at {s_end}, past the file's {size} bytes"));
        }
        if s.offset < end {
            return Err("sparse map entries overlap or are out of order".into());
        }
        end = s_end;
        data += s.length;
    }
    Ok(data)
}

/// True for the types that never have a data section.
fn header_only(t: u8) -> bool {
    matches!(
        t,
        typeflag::LINK
            | typeflag::SYMLINK
            | typeflag::CHAR
            | typeflag::BLOCK
            | typeflag::DIR
            | typeflag::FIFO
    )
}

fn eof(missing: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the layer ends {missing} bytes before the end of the tar data it declares"),
    )
}

/// The format of a header block, `None` when its checksum is wrong.
fn format_of(b: &[u8; BLOCK_BYTES]) -> Option<Format> {
    let stored = parse_octal(&b[148..156]).ok()?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    if stored != unsigned && stored != signed {
        return None;
    }
    let (magic, version, trailer) = (&b[257..263], &b[263..265], &b[508..512]);
    Some(if magic == b"ustar\0" && trailer == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::UstarPax
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// Parses a header block's own fields.
fn parse_header(b: &[u8; BLOCK_BYTES]) -> Result<Member, String> {
    let format = format_of(b).ok_or("bad tar header (checksum mismatch or not a tar header)")?;
    let num = |r: std::ops::Range<usize>, what: &str| {
        parse_numeric(&b[r]).map_err(|e| format!("bad {what} field: {e}"))
    };
    let mut m = Member {
        typeflag: b[156],
        name: until_nul(&b[..100]).to_vec(),
        link: until_nul(&b[157..257]).to_vec(),
        size: 0,
        mode: num(100..108, "mode")?,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        mtime: num(136..148, "mtime")?,
        ..Member::default()
    };
    let size = num(124..136, "size")?;
    m.negative_size = (size < 0).then_some("negative size in the tar header");
    m.size = size.max(0) as u64;
    if format == Format::V7 {
        return Ok(m);
    }
    m.devmajor = num(329..337, "device major")?;
    m.devminor = num(337..345, "device minor")?;
    let prefix: &[u8] = match format {
        Format::UstarPax => until_nul(&b[345..500]),
        Format::Star => {
            num(476..488, "atime")?;
            num(488..500, "ctime")?;
            until_nul(&b[345..476])
        }
        _ => {
            // Go before 1.8 wrote a USTAR prefix into a GNU header; GNU atime and ctime
            // that do not parse are read as that prefix instead.
            let times_ok = [345..357, 357..369]
                .into_iter()
                .all(|r| b[r.start] == 0 || parse_numeric(&b[r]).is_ok());
            let p = until_nul(&b[345..500]);
            if times_ok || !p.is_ascii() {
                b""
            } else {
                p
            }
        }
    };
    if !prefix.is_empty() {
        m.name = [prefix, b"/", &m.name].concat();
    }
    Ok(m)
}

/// Applies PAX records to a member (an empty value keeps the header's).
fn merge_pax(m: &mut Member, pax: &[(Vec<u8>, Vec<u8>)]) -> Result<(), String> {
    let int = |k: &[u8], v: &[u8]| {
        parse_go_int(v).ok_or_else(|| format!("bad PAX {}", String::from_utf8_lossy(k)))
    };
    m.xattrs.clear();
    for (k, v) in pax {
        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
            m.xattrs.push((name.to_vec(), v.clone()));
        }
        if v.is_empty() {
            continue;
        }
        match k.as_slice() {
            b"path" => m.name = v.clone(),
            b"linkpath" => m.link = v.clone(),
            b"uid" => m.uid = int(k, v)?,
            b"gid" => m.gid = int(k, v)?,
            b"size" => {
                let n = int(k, v)?;
                m.negative_size = (n < 0).then_some("bad PAX size: negative");
                m.size = n.max(0) as u64;
            }
            b"mtime" => (m.mtime, m.mtime_nsec) = parse_pax_time(v).ok_or("bad PAX mtime")?,
            b"atime" | b"ctime" => {
                parse_pax_time(v)
                    .ok_or_else(|| format!("bad PAX {}", String::from_utf8_lossy(k)))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The value of a PAX record.
fn pax_get<'a>(pax: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    pax.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

/// Parses the records of a PAX header: `LEN KEY=VALUE\n` each. A key seen twice keeps its
/// last value; GNU sparse 0.0 `offset`/`numbytes` pairs become a `GNU.sparse.map` record.
fn parse_pax(mut s: &[u8]) -> Result<PaxRecords, String> {
    let mut out: PaxRecords = Vec::new();
    let mut map: Vec<&[u8]> = Vec::new();
    while !s.is_empty() {
        let sp = s
            .iter()
            .position(|&b| b == b' ')
            .ok_or("bad PAX record: malformed pax extension (no length)")?;
        let n = parse_go_int(&s[..sp])
            .filter(|&n| n >= 5 && n as u64 <= s.len() as u64 && n as usize > sp + 1)
            .ok_or("bad PAX record: malformed pax extension (bad length)")?
            as usize;
        if s[n - 1] != b'\n' {
            return Err("bad PAX record: malformed pax extension (no newline at its end)".into());
        }
        let rec = &s[sp + 1..n - 1];
        s = &s[n..];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("bad PAX record: malformed pax extension (no '=')")?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        let nul_in = if matches!(k, b"path" | b"linkpath" | b"uname" | b"gname") { v } else { k };
        if k.is_empty() || nul_in.contains(&0) {
            return Err(format!(
                "bad PAX record {:?}: malformed pax extension (NUL or empty key)",
                String::from_utf8_lossy(k)
            ));
        }
        match k {
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                let want: &[u8] = if map.len().is_multiple_of(2) {
                    b"GNU.sparse.offset"
                } else {
                    b"GNU.sparse.numbytes"
                };
                if k != want || v.contains(&b',') {
                    return Err("bad GNU sparse 0.0 map records".into());
                }
                map.push(v);
            }
            _ => match out.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.to_vec(),
                None => out.push((k.to_vec(), v.to_vec())),
            },
        }
    }
    if !map.is_empty() {
        let joined = map.join(&b","[..]);
        match out.iter_mut().find(|(k, _)| k == b"GNU.sparse.map") {
            Some(e) => e.1 = joined,
            None => out.push((b"GNU.sparse.map".to_vec(), joined)),
        }
    }
    Ok(out)
}

/// The bytes before the first NUL.
fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// A numeric header field: base-256 when its first bit is set, else octal.
fn parse_numeric(b: &[u8]) -> Result<i64, String> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let inv = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let c = if i == 0 { (c ^ inv) & 0x7f } else { c ^ inv };
            if x >> 56 != 0 {
                return Err("base-256 number does not fit 64 bits".into());
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 != 0 {
            return Err("base-256 number does not fit 64 bits".into());
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    parse_octal(b)
}

/// An octal field: spaces and NULs around it are ignored, an empty field is 0.
fn parse_octal(b: &[u8]) -> Result<i64, String> {
    let start = b.iter().position(|&c| c != b' ' && c != 0).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ' && c != 0).map_or(start, |i| i + 1);
    let t = until_nul(&b[start..end.max(start)]);
    if start == end {
        return Ok(0);
    }
    let s = std::str::from_utf8(t).map_err(|_| "not an octal number".to_string())?;
    if s.starts_with('+') {
        return Err(format!("{s:?} is not an octal number"));
    }
    u64::from_str_radix(s, 8).map(|x| x as i64).map_err(|_| format!("{s:?} is not an octal number"))
}

/// A decimal number as Go's `strconv.ParseInt(s, 10, 64)` reads it: an optional sign, then
/// digits only.
pub fn parse_go_int(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// Parses a PAX time: `[-+]seconds[.fraction]` (fraction digits past nine are dropped).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs_s, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs = parse_go_int(secs_s.as_bytes())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if !secs_s.starts_with('-') || nsec == 0 {
        return Some((secs, nsec));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 750000000.
    Some((secs.checked_sub(1)?, 1_000_000_000 - nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_pax_time(b"5"), Some((5, 0)));
        assert_eq!(parse_pax_time(b"+5"), Some((5, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-0.5"), Some((-1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.5e3"), None);
        assert_eq!(parse_pax_time(b""), None);
        assert_eq!(parse_pax_time(b".5"), None);
    }

    #[test]
    fn numeric_fields_read_as_go_reads_them() {
        assert_eq!(parse_numeric(b"       \0"), Ok(0));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0"), Ok(0));
        assert_eq!(parse_numeric(b" 000755\0"), Ok(0o755));
        assert_eq!(parse_numeric(b"0000644 "), Ok(0o644));
        assert!(parse_numeric(b"00008\0\0\0").is_err());
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), Ok(4_294_967_295));
        assert_eq!(parse_numeric(&[0xff; 8]), Ok(-1));
        assert!(parse_numeric(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn pax_records_keep_the_last_value_and_refuse_nul_keys() {
        let recs = parse_pax(b"11 path=ab\n11 path=cd\n").unwrap();
        assert_eq!(recs, vec![(b"path".to_vec(), b"cd".to_vec())]);
        assert!(parse_pax(b"13 a\0b=value\n").is_err());
        assert!(parse_pax(b"12 path=a\0b\n").is_err());
        assert!(parse_pax(b"10 path=ab").is_err());
        let sparse = parse_pax(
            b"23 GNU.sparse.offset=1\n25 GNU.sparse.numbytes=2\n23 GNU.sparse.offset=5\n25 GNU.sparse.numbytes=3\n",
        )
        .unwrap();
        assert_eq!(sparse, vec![(b"GNU.sparse.map".to_vec(), b"1,2,5,3".to_vec())]);
    }

    #[test]
    fn sparse_maps_must_be_ordered_and_within_the_file() {
        let s = |offset, length| Segment { offset, length };
        assert_eq!(check_segments(&[s(0, 2), s(5, 3)], 8), Ok(5));
        assert_eq!(check_segments(&[s(1, 3), s(6, 0), s(6, 0), s(6, 2)], 8), Ok(5));
        assert!(check_segments(&[s(1, 3), s(6, 5)], 10).is_err());
        assert!(check_segments(&[s(1, 3), s(2, 2)], 10).is_err());
        assert!(check_segments(&[s(u64::MAX - 1, 3)], u64::MAX).is_err());
    }
}
