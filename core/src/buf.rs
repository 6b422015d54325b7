//! Owned buffers with a stable address.
//!
//! An operation takes its buffer by value and hands it back in its completion:
//! while the kernel (or a worker thread) may touch the memory, nobody else owns
//! it. [`IoBuf`] is what a write needs (initialised bytes to read from),
//! [`IoBufMut`] what a read needs (memory to fill). Both are `unsafe` traits:
//! an implementation promises that the pointer stays valid and unmoved for as
//! long as the value lives, even when the value itself is moved.
//!
//! Drivers do not know the caller's type: they carry [`AnyBuf`] / [`AnyBufMut`],
//! which erase it and give it back with [`AnyBufMut::downcast`]. A `Vec<u8>`
//! is carried as its raw parts, without an allocation; other types are boxed
//! (one small allocation per op).

use std::any::Any;
use std::mem::ManuallyDrop;
use std::ops::{Bound, RangeBounds};

/// A buffer an operation may read from (a write's source).
///
/// # Safety
///
/// `stable_ptr()` must point at `bytes_total()` bytes of which the first
/// `bytes_init()` are initialised, and must stay valid and at the same address
/// until the value is dropped, whatever moves of the value happen meanwhile
/// (the bytes live on the heap or in static memory, never inline).
pub unsafe trait IoBuf: Send + 'static {
    /// The start of the memory.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes from the start are initialised (a write sends these).
    fn bytes_init(&self) -> usize;
    /// How many bytes the memory holds (a read may fill up to this many).
    fn bytes_total(&self) -> usize;

    /// A view of `range` of this buffer that owns the buffer.
    ///
    /// Bounds past `bytes_total()` are clamped, so a view never reaches outside
    /// the memory.
    fn slice(self, range: impl RangeBounds<usize>) -> Slice<Self>
    where
        Self: Sized,
    {
        let total = self.bytes_total();
        let begin = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .min(total);
        let end = match range.end_bound() {
            Bound::Included(&n) => n.saturating_add(1),
            Bound::Excluded(&n) => n,
            Bound::Unbounded => total,
        }
        .clamp(begin, total);
        Slice {
            buf: self,
            begin,
            end,
        }
    }
}

/// A buffer an operation may write into (a read's destination).
///
/// # Safety
///
/// Everything [`IoBuf`] promises, and `stable_mut_ptr()` points at the same
/// memory, writable for `bytes_total()` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// The start of the memory, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// Records that the first `n` bytes now hold data (after a read of `n`
    /// bytes). Growable buffers (`Vec`, `BytesMut`) set their length to
    /// exactly `n`; fixed ones (`Box<[u8]>`) keep their length; a [`Slice`]
    /// only ever grows the length of the buffer under it.
    ///
    /// # Safety
    ///
    /// The first `n` bytes must really be initialised and `n <= bytes_total()`.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap allocation does not move when the Vec value moves; the
// pointer covers `capacity` bytes, the first `len` initialised.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as for IoBuf; the allocation is uniquely owned, so writable.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, n: usize) {
        // SAFETY: the caller promises n <= capacity and the bytes are initialised.
        unsafe { self.set_len(n) }
    }
}

// SAFETY: a boxed slice is a heap allocation of exactly `len` initialised bytes.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: uniquely owned heap memory, writable.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

// SAFETY: BytesMut owns (uniquely, for the view it has) heap memory of
// `capacity` bytes that does not move with the value.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: BytesMut's view is uniquely owned, so writable.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, n: usize) {
        // SAFETY: the caller promises n <= capacity and the bytes are initialised.
        unsafe { self.set_len(n) }
    }
}

// SAFETY: Bytes points at immutable shared heap or static memory that lives as
// long as any handle to it; read-only, so no IoBufMut.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or goes away; read-only.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or goes away; read-only.
unsafe impl IoBuf for &'static str {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

/// A view of part of an owned buffer; it owns the buffer and gives it back
/// with [`Slice::into_inner`]. An operation on a slice touches only the bytes
/// inside the view.
#[derive(Debug)]
pub struct Slice<T> {
    buf: T,
    begin: usize,
    end: usize,
}

impl<T> Slice<T> {
    /// Where the view starts in the buffer.
    pub fn begin(&self) -> usize {
        self.begin
    }
    /// Where the view ends (exclusive) in the buffer.
    pub fn end(&self) -> usize {
        self.end
    }
    /// The buffer under the view.
    pub fn get_ref(&self) -> &T {
        &self.buf
    }
    /// Gives the whole buffer back.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

// SAFETY: the view is inside the buffer's memory (begin <= end <= total, fixed
// at construction), which is stable because T: IoBuf.
unsafe impl<T: IoBuf> IoBuf for Slice<T> {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: begin <= bytes_total, so the offset stays in the allocation.
        unsafe { self.buf.stable_ptr().add(self.begin) }
    }
    fn bytes_init(&self) -> usize {
        self.buf
            .bytes_init()
            .saturating_sub(self.begin)
            .min(self.end - self.begin)
    }
    fn bytes_total(&self) -> usize {
        self.end - self.begin
    }
}

// SAFETY: as above; writable because T: IoBufMut.
unsafe impl<T: IoBufMut> IoBufMut for Slice<T> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: begin <= bytes_total, so the offset stays in the allocation.
        unsafe { self.buf.stable_mut_ptr().add(self.begin) }
    }
    unsafe fn set_init(&mut self, n: usize) {
        let upto = self.begin + n;
        let init = self.buf.bytes_init();
        if upto > init {
            if init < self.begin {
                // The view starts past the buffer's initialised bytes: the
                // gap between them was never written. Zero it, so that
                // growing the buffer's length never exposes uninitialised
                // memory to safe code.
                // SAFETY: init < begin <= bytes_total, so the range is inside
                // the buffer's memory, which we own uniquely (no op is in
                // flight: set_init runs after the kernel or worker is done).
                unsafe {
                    std::ptr::write_bytes(self.buf.stable_mut_ptr().add(init), 0, self.begin - init)
                }
            }
            // SAFETY: bytes before `begin` are initialised (they were, or
            // were just zeroed); the caller vouches for the n bytes of the view.
            unsafe { self.buf.set_init(upto) }
        }
    }
}

/// Object-safe face of an [`IoBuf`], so drivers can hold any buffer type.
trait ErasedBuf: Send {
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: IoBuf> ErasedBuf for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Object-safe face of an [`IoBufMut`].
trait ErasedBufMut: Send {
    fn set_init(&mut self, n: usize);
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: IoBufMut> ErasedBufMut for T {
    fn set_init(&mut self, n: usize) {
        let n = n.min(self.bytes_total());
        // SAFETY: only drivers call this, after the kernel reported n bytes
        // written into the first n bytes of this memory.
        unsafe { IoBufMut::set_init(self, n) }
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Moves `t` into a `U` when they are the same type (decided at compile time
/// for each instantiation, so the check costs nothing), else gives it back.
fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let mut slot = Some(t);
    let taken = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take);
    match (taken, slot) {
        (Some(u), _) => Ok(u),
        (None, Some(t)) => Err(t),
        (None, None) => unreachable!("the value is taken only when the types match"),
    }
}

/// Who owns an [`AnyBuf`]'s memory. A `Vec<u8>`, the most common buffer, is
/// kept as its raw parts (no allocation per op); any other type is boxed.
enum BufOwner {
    /// The memory of a `Vec<u8>` with this capacity (`AnyBuf::len` is its
    /// length, `AnyBuf::ptr` its pointer).
    Vec {
        cap: usize,
    },
    Boxed(Box<dyn ErasedBuf>),
}

/// A write buffer of any [`IoBuf`] type, as drivers carry it.
///
/// The pointer and lengths are read once, at construction; they stay valid
/// while this value lives because the buffer's memory is stable.
pub struct AnyBuf {
    ptr: *const u8,
    len: usize,
    owner: BufOwner,
}

// SAFETY: the raw pointer refers into memory owned by `owner` (a Vec<u8> taken
// apart, or a boxed buffer), which is Send; sending the pair sends the owner.
unsafe impl Send for AnyBuf {}

impl AnyBuf {
    /// Erases the type of `buf`; its initialised bytes are what a write sends.
    pub fn new<B: IoBuf>(buf: B) -> AnyBuf {
        match cast::<B, Vec<u8>>(buf) {
            Ok(v) => {
                let mut v = ManuallyDrop::new(v);
                AnyBuf {
                    ptr: v.as_mut_ptr(),
                    len: v.len(),
                    owner: BufOwner::Vec { cap: v.capacity() },
                }
            }
            Err(buf) => AnyBuf {
                ptr: buf.stable_ptr(),
                len: buf.bytes_init(),
                owner: BufOwner::Boxed(Box::new(buf)),
            },
        }
    }
    /// The first byte to send.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    /// How many bytes there are to send.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes to send.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr covers len initialised bytes owned by `owner`, which we
        // borrow for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    /// Gives the caller's buffer back, or `self` if `B` is not its type.
    pub fn downcast<B: IoBuf>(self) -> Result<B, AnyBuf> {
        let this = ManuallyDrop::new(self);
        let (ptr, len) = (this.ptr, this.len);
        // SAFETY: `this` is never dropped or used again, so the owner is moved
        // out exactly once.
        let owner = unsafe { std::ptr::read(&this.owner) };
        match owner {
            BufOwner::Vec { cap } => {
                // SAFETY: ptr, len and cap are the raw parts of the Vec<u8>
                // taken apart in `new`, which nothing else owns.
                let v = unsafe { Vec::from_raw_parts(ptr as *mut u8, len, cap) };
                cast::<Vec<u8>, B>(v).map_err(AnyBuf::new)
            }
            BufOwner::Boxed(b) => match b.into_any().downcast::<B>() {
                Ok(b) => Ok(*b),
                Err(any) => Err(AnyBuf {
                    ptr,
                    len,
                    owner: BufOwner::Boxed(Box::new(Reboxed(any))),
                }),
            },
        }
    }
}

impl Drop for AnyBuf {
    fn drop(&mut self) {
        if let BufOwner::Vec { cap } = self.owner {
            // SAFETY: the raw parts of the Vec<u8> taken apart in `new`; this
            // value owns them, and drivers drop it only once no kernel or
            // worker can touch the memory.
            drop(unsafe { Vec::from_raw_parts(self.ptr as *mut u8, self.len, cap) });
        }
    }
}

impl std::fmt::Debug for AnyBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyBuf").field("len", &self.len).finish()
    }
}

/// Who owns an [`AnyBufMut`]'s memory: a `Vec<u8>` as its raw parts, any
/// other type boxed.
enum MutOwner {
    /// The memory of a `Vec<u8>` of this length (`AnyBufMut::cap` is its
    /// capacity, `AnyBufMut::ptr` its pointer).
    Vec {
        len: usize,
    },
    Boxed(Box<dyn ErasedBufMut>),
}

/// A read buffer of any [`IoBufMut`] type, as drivers carry it.
pub struct AnyBufMut {
    ptr: *mut u8,
    cap: usize,
    owner: MutOwner,
}

// SAFETY: the raw pointer refers into memory owned by `owner` (a Vec<u8> taken
// apart, or a boxed buffer), which is Send.
unsafe impl Send for AnyBufMut {}

impl AnyBufMut {
    /// Erases the type of `buf`; a read may fill all `bytes_total()` bytes.
    pub fn new<B: IoBufMut>(buf: B) -> AnyBufMut {
        match cast::<B, Vec<u8>>(buf) {
            Ok(v) => {
                let mut v = ManuallyDrop::new(v);
                AnyBufMut {
                    ptr: v.as_mut_ptr(),
                    cap: v.capacity(),
                    owner: MutOwner::Vec { len: v.len() },
                }
            }
            Err(mut buf) => AnyBufMut {
                ptr: buf.stable_mut_ptr(),
                cap: buf.bytes_total(),
                owner: MutOwner::Boxed(Box::new(buf)),
            },
        }
    }
    /// The first byte a read may fill.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    /// How many bytes a read may fill.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// The memory a read may fill, for backends that copy into it
    /// (a worker thread's `pread`, for example).
    ///
    /// # Safety
    ///
    /// The memory may be uninitialised: write to it, do not read it.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr covers cap bytes owned by `owner`, borrowed mutably here;
        // the caller promises not to read uninitialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
    /// Records that a read filled the first `n` bytes (clamped to the capacity).
    ///
    /// # Safety
    ///
    /// The first `n` bytes must really have been written.
    pub unsafe fn set_init(&mut self, n: usize) {
        match &mut self.owner {
            // A Vec's length becomes exactly n, as `IoBufMut::set_init` says.
            MutOwner::Vec { len } => *len = n.min(self.cap),
            MutOwner::Boxed(b) => b.set_init(n),
        }
    }
    /// Gives the caller's buffer back, or `self` if `B` is not its type.
    pub fn downcast<B: IoBufMut>(self) -> Result<B, AnyBufMut> {
        let this = ManuallyDrop::new(self);
        let (ptr, cap) = (this.ptr, this.cap);
        // SAFETY: `this` is never dropped or used again, so the owner is moved
        // out exactly once.
        let owner = unsafe { std::ptr::read(&this.owner) };
        match owner {
            MutOwner::Vec { len } => {
                // SAFETY: ptr, len and cap are the raw parts of the Vec<u8>
                // taken apart in `new` (len as `set_init` left it: initialised
                // bytes), which nothing else owns.
                let v = unsafe { Vec::from_raw_parts(ptr, len, cap) };
                cast::<Vec<u8>, B>(v).map_err(AnyBufMut::new)
            }
            MutOwner::Boxed(b) => match b.into_any().downcast::<B>() {
                Ok(b) => Ok(*b),
                Err(any) => Err(AnyBufMut {
                    ptr,
                    cap,
                    owner: MutOwner::Boxed(Box::new(Rebox(any))),
                }),
            },
        }
    }
}

impl Drop for AnyBufMut {
    fn drop(&mut self) {
        if let MutOwner::Vec { len } = self.owner {
            // SAFETY: the raw parts of the Vec<u8> taken apart in `new`; this
            // value owns them, and drivers drop it only once no kernel or
            // worker can touch the memory.
            drop(unsafe { Vec::from_raw_parts(self.ptr, len, self.cap) });
        }
    }
}

impl std::fmt::Debug for AnyBufMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyBufMut").field("cap", &self.cap).finish()
    }
}

/// Holds a buffer that failed a downcast, so it is not dropped early.
struct Reboxed(Box<dyn Any>);
// SAFETY: only ever built from a Box<dyn Any> that came out of an ErasedBuf,
// whose concrete type is Send.
unsafe impl Send for Reboxed {}
impl ErasedBuf for Reboxed {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.0
    }
}

/// Holds a read buffer that failed a downcast; `set_init` is no longer
/// reachable for it (the type is lost), which only a wrong downcast causes.
struct Rebox(Box<dyn Any>);
// SAFETY: only ever built from a Box<dyn Any> that came out of an
// ErasedBufMut, whose concrete type is Send.
unsafe impl Send for Rebox {}
impl ErasedBufMut for Rebox {
    fn set_init(&mut self, _n: usize) {}
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_is_clamped_to_the_buffer() {
        let v = vec![0u8; 10];
        let s = v.slice(4..100);
        assert_eq!((s.begin(), s.end()), (4, 10));
        assert_eq!(s.bytes_total(), 6);
        let s = s.into_inner().slice(20..);
        assert_eq!(s.bytes_total(), 0);
    }

    #[test]
    fn any_buf_mut_round_trips_the_same_allocation() {
        let v: Vec<u8> = Vec::with_capacity(64);
        let ptr = v.as_ptr();
        let mut a = AnyBufMut::new(v);
        assert_eq!(a.as_mut_ptr() as *const u8, ptr);
        // SAFETY: we write 3 bytes then declare them initialised.
        unsafe {
            a.as_mut_slice()[..3].copy_from_slice(b"abc");
            a.set_init(3);
        }
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!(v.as_ptr(), ptr);
        assert_eq!(v, b"abc");
    }

    #[test]
    fn wrong_downcast_keeps_the_buffer() {
        let a = AnyBuf::new(vec![1u8, 2, 3]);
        let a = a.downcast::<bytes::Bytes>().unwrap_err();
        assert_eq!(a.as_slice(), &[1, 2, 3]);
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!(v, vec![1, 2, 3]);
    }

    #[test]
    fn slice_read_past_the_initialised_bytes_zeroes_the_gap() {
        // A view that starts beyond the Vec's length: a read into it must not
        // leave the bytes between the old length and the view uninitialised
        // (Miri reports the read of them below as UB without the fix).
        let mut v: Vec<u8> = Vec::with_capacity(64);
        v.push(7);
        let mut s = v.slice(16..32);
        // SAFETY: we write the 16 bytes of the view, then declare them.
        unsafe {
            std::ptr::write_bytes(s.stable_mut_ptr(), 0xab, 16);
            IoBufMut::set_init(&mut s, 16);
        }
        let v = s.into_inner();
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], 7, "bytes before the gap are kept");
        assert!(v[1..16].iter().all(|&b| b == 0), "the gap is zeroed");
        assert!(v[16..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn slice_set_init_only_grows() {
        let mut v = vec![9u8; 8];
        v.truncate(8);
        let mut s = v.slice(2..6);
        // SAFETY: the bytes are initialised (the Vec was full).
        unsafe { IoBufMut::set_init(&mut s, 2) };
        assert_eq!(s.into_inner().len(), 8);
    }

    #[test]
    fn vec_write_buffer_keeps_its_allocation_length_and_capacity() {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(b"hello");
        let ptr = v.as_ptr();
        let a = AnyBuf::new(v);
        assert_eq!((a.as_ptr(), a.len()), (ptr, 5));
        assert_eq!(a.as_slice(), b"hello");
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!((v.as_ptr(), v.len(), v.capacity()), (ptr, 5, 32));
    }

    #[test]
    fn vec_read_buffer_wrong_downcast_keeps_the_bytes() {
        let v: Vec<u8> = Vec::with_capacity(16);
        let ptr = v.as_ptr();
        let mut a = AnyBufMut::new(v);
        // SAFETY: we write 4 bytes, then declare them initialised.
        unsafe {
            a.as_mut_slice()[..4].copy_from_slice(b"wxyz");
            a.set_init(4);
        }
        let a = a.downcast::<Box<[u8]>>().unwrap_err();
        assert_eq!(a.capacity(), 16);
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!((v.as_ptr(), v.capacity()), (ptr, 16));
        assert_eq!(v, b"wxyz");
    }

    #[test]
    fn vec_read_buffer_set_init_is_clamped_to_the_capacity() {
        let mut a = AnyBufMut::new(vec![7u8; 8]);
        // SAFETY: all 8 bytes of the Vec are initialised; 100 is clamped to 8.
        unsafe { a.set_init(100) };
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!(v.len(), 8);
        let mut a = AnyBufMut::new(vec![7u8; 8]);
        // SAFETY: the first 3 bytes are initialised.
        unsafe { a.set_init(3) };
        let v: Vec<u8> = a.downcast().unwrap();
        assert_eq!(v, [7, 7, 7]);
    }

    #[test]
    fn buffers_dropped_without_downcast_drop_their_owner_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        // A buffer type that counts its drops (boxed path).
        struct Counted(Vec<u8>, Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        // SAFETY: delegates to the inner Vec, whose heap memory is stable.
        unsafe impl IoBuf for Counted {
            fn stable_ptr(&self) -> *const u8 {
                self.0.as_ptr()
            }
            fn bytes_init(&self) -> usize {
                self.0.len()
            }
            fn bytes_total(&self) -> usize {
                self.0.capacity()
            }
        }
        // SAFETY: as above, uniquely owned.
        unsafe impl IoBufMut for Counted {
            fn stable_mut_ptr(&mut self) -> *mut u8 {
                self.0.as_mut_ptr()
            }
            unsafe fn set_init(&mut self, n: usize) {
                // SAFETY: the caller's promise, passed on.
                unsafe { IoBufMut::set_init(&mut self.0, n) }
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        drop(AnyBuf::new(Counted(vec![1; 4], drops.clone())));
        drop(AnyBufMut::new(Counted(vec![1; 4], drops.clone())));
        let a = AnyBufMut::new(Counted(vec![1; 4], drops.clone()));
        let a = a.downcast::<Vec<u8>>().unwrap_err();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        // The Vec path has no drop hook; valgrind and Miri see its frees.
        drop(AnyBuf::new(vec![1u8; 4]));
        drop(AnyBufMut::new(Vec::<u8>::with_capacity(4)));
    }
}
