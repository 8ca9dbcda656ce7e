//! Testbed library: namespaces, link emulator, traffic tools.
