//! hag daemon library.
