//! Search that understands meaning: the sentence-embedding model (`embedding`). The index of
//! post and comment vectors and the hybrid ranking build on it.

pub mod embedding;
