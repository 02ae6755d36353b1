//! The FUSE adapter: inode table, attributes and errno mapping over the layers below. It
//! translates kernel requests into engine calls and holds no policy of its own.
