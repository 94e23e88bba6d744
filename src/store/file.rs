//! `FileStore`: one file per session in a folder. (Being written for issue 3.)
