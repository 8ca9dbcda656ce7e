//! hcpe daemon library.
