//! The benchmark's floor (arm S0W): the smallest proxy-wasm filter Envoy
//! will load. It answers every callback with "continue" and touches no
//! host state, so its cost is Envoy's wasm machinery alone (VM, context
//! per stream, one call per callback). Never shipped.

// `no_mangle` exports are the ABI; there is no other unsafe code here.
#![allow(unsafe_code)]

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn _initialize() {}

/// The host's allocator (null on failure, never a trap).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(size).is_err() {
        return std::ptr::null_mut();
    }
    v.resize(size, 0);
    Box::into_raw(v.into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_context: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _eos: bool) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_done(_context: u32) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context: u32) {}
