//! Board support for the device-node firmware on QEMU's `netduinoplus2` (STM32F405): USART1
//! polled, a 1 kHz SysTick clock, semihosting output and exit status, stack painting for the
//! high-water mark, and the linker's section bounds. The only `unsafe` of the device node
//! lives here (register access, semihosting calls, linker symbols); `hypha-nostd` itself
//! forbids it.
#![no_std]

use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

/// Milliseconds since boot (SysTick at 1 kHz).
static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// A fault ends the run with status 1 (QEMU would otherwise spin).
#[exception]
unsafe fn HardFault(_: &cortex_m_rt::ExceptionFrame) -> ! {
    exit(1)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No message: formatting would pull core::fmt into the image.
    write(b"panic\n");
    exit(101)
}

/// Starts the 1 kHz tick (QEMU's netduinoplus2 core clock: 168 MHz; SysTick follows host
/// time without `-icount`).
pub fn start_clock(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(168_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Milliseconds since boot.
pub fn millis() -> u32 {
    MILLIS.load(Ordering::Relaxed)
}

/// Microseconds since boot as the node's clock.
pub fn now() -> hypha_core::time::Instant {
    hypha_core::time::Instant::from_micros(u64::from(millis()) * 1000)
}

const USART1: usize = 0x4001_1000;
const SR: usize = USART1;
const DR: usize = USART1 + 4;
const CR1: usize = USART1 + 0xC;
const RXNE: u32 = 1 << 5;
const TXE: u32 = 1 << 7;

/// USART1, the UART QEMU maps to the first `-serial`.
pub struct Uart(());

impl Uart {
    /// Enables the transmitter and receiver.
    pub fn new() -> Self {
        // SAFETY: fixed MMIO address of USART1 on the STM32F405; nothing else touches it.
        unsafe { core::ptr::write_volatile(CR1 as *mut u32, (1 << 13) | (1 << 3) | (1 << 2)) };
        Uart(())
    }

    /// Writes every byte (blocking on TXE).
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: as above.
            unsafe {
                while core::ptr::read_volatile(SR as *const u32) & TXE == 0 {}
                core::ptr::write_volatile(DR as *mut u32, u32::from(b));
            }
        }
    }

    /// Reads what has arrived, up to `buf.len()` bytes, without waiting.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in buf.iter_mut() {
            // SAFETY: as above.
            let sr = unsafe { core::ptr::read_volatile(SR as *const u32) };
            if sr & RXNE == 0 {
                break;
            }
            // SAFETY: as above; reading DR clears RXNE.
            *slot = unsafe { core::ptr::read_volatile(DR as *const u32) } as u8;
            n += 1;
        }
        n
    }
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes to the host's stdout through semihosting (no formatting).
pub fn write(bytes: &[u8]) {
    if let Ok(mut out) = cortex_m_semihosting::hio::hstdout() {
        let _ = out.write_all(bytes);
    }
}

/// Ends the QEMU run with `code` as its exit status (semihosting SYS_EXIT_EXTENDED).
pub fn exit(code: u32) -> ! {
    let block = [0x2_0026u32 /* ADP_Stopped_ApplicationExit */, code];
    // SAFETY: a semihosting call with a valid parameter block; QEMU ends the run.
    unsafe { cortex_m_semihosting::syscall1(0x20, block.as_ptr() as usize) };
    loop {
        cortex_m::asm::wfi();
    }
}

unsafe extern "C" {
    static __sheap: u32;
    static _stack_start: u32;
    static __sidata: u32;
    static __sdata: u32;
    static __edata: u32;
}

const PAINT: u32 = 0xCCCC_CCCC;
const FLASH_ORIGIN: usize = 0x0800_0000;
const RAM_ORIGIN: usize = 0x2000_0000;

fn stack_bottom() -> usize {
    core::ptr::addr_of!(__sheap) as usize
}

fn stack_top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

/// Paints the free stack (from the end of the statics to just below the current stack
/// pointer) so that [`stack_high_water`] can find the deepest point the stack reached.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = (stack_bottom() + 3) & !3;
    while p + 64 < sp {
        // SAFETY: [__sheap, sp - 64) is unused RAM between the statics and the live stack.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack used at the deepest point so far (since [`paint_stack`]).
pub fn stack_high_water() -> u32 {
    let mut p = (stack_bottom() + 3) & !3;
    let top = stack_top();
    // SAFETY: reads within RAM, between the statics and the stack top.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    (top - p) as u32
}

/// Bytes of RAM taken by statics (.data + .bss + .uninit).
pub fn static_ram() -> u32 {
    (stack_bottom() - RAM_ORIGIN) as u32
}

/// Bytes of flash taken by the image (vector table, .text, .rodata, and .data's initial
/// values).
pub fn flash_used() -> u32 {
    let (sidata, sdata, edata) = (
        core::ptr::addr_of!(__sidata) as usize,
        core::ptr::addr_of!(__sdata) as usize,
        core::ptr::addr_of!(__edata) as usize,
    );
    (sidata + (edata - sdata) - FLASH_ORIGIN) as u32
}

/// Formats `n` in decimal into `buf`, returning the digits (no core::fmt).
pub fn decimal(n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// A small line buffer for reports, filled without core::fmt.
pub struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 192],
            len: 0,
        }
    }

    /// Appends text (truncated when full).
    pub fn text(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends ` name=value`.
    pub fn field(&mut self, name: &[u8], value: u32) -> &mut Self {
        let mut d = [0u8; 10];
        self.text(b" ").text(name).text(b"=");
        let digits = decimal(value, &mut d);
        let mut tmp = [0u8; 10];
        let n = digits.len();
        tmp[..n].copy_from_slice(digits);
        self.text(&tmp[..n])
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}
