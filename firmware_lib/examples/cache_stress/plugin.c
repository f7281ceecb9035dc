/* cache-stress's plugin, built twice with -DPLUGIN_FRAME=32 and 48: lib_alloc(n) allocates n + 16
 * bytes from a frame of PLUGIN_FRAME bytes. Written by hand so that both builds put every
 * instruction, the call to malloc too, at the same offset: only the frame size differs. */
#include <stdlib.h>

#ifndef PLUGIN_FRAME
#error "build with -DPLUGIN_FRAME=<bytes, a multiple of 16>"
#endif

#define STR2(x) #x
#define STR(x) STR2(x)

/* read by cache-stress: the frame sizes of the two plugins must differ by one level of its recursion */
const int plugin_frame = PLUGIN_FRAME;

#if defined(__x86_64__)
/* the call pushed 8 of the frame's bytes: sub $imm8 has one length for both sizes */
__asm__(".text\n"
        ".globl lib_alloc\n"
        ".type lib_alloc, @function\n"
        "lib_alloc:\n"
        " .cfi_startproc\n"
        " sub $(" STR(PLUGIN_FRAME) " - 8), %rsp\n"
        " .cfi_def_cfa_offset " STR(PLUGIN_FRAME) "\n"
        " movslq %edi, %rdi\n"
        " add $16, %rdi\n"
        " call malloc@PLT\n"
        " add $(" STR(PLUGIN_FRAME) " - 8), %rsp\n"
        " .cfi_def_cfa_offset 8\n"
        " ret\n"
        " .cfi_endproc\n"
        ".size lib_alloc, . - lib_alloc\n");
#elif defined(__aarch64__)
/* x30 at the top of the frame and no frame record: x29 stays the caller's, as on x86_64 */
__asm__(".text\n"
        ".globl lib_alloc\n"
        ".type lib_alloc, %function\n"
        "lib_alloc:\n"
        " .cfi_startproc\n"
        " sub sp, sp, #" STR(PLUGIN_FRAME) "\n"
        " .cfi_def_cfa_offset " STR(PLUGIN_FRAME) "\n"
        " str x30, [sp, #(" STR(PLUGIN_FRAME) " - 8)]\n"
        " .cfi_offset 30, -8\n"
        " add w0, w0, #16\n"
        " sxtw x0, w0\n"
        " bl malloc\n"
        " ldr x30, [sp, #(" STR(PLUGIN_FRAME) " - 8)]\n"
        " .cfi_restore 30\n"
        " add sp, sp, #" STR(PLUGIN_FRAME) "\n"
        " .cfi_def_cfa_offset 0\n"
        " ret\n"
        " .cfi_endproc\n"
        ".size lib_alloc, . - lib_alloc\n");
#else
/* Elsewhere the frames are the compiler's and both builds are alike: the recorder has no capture
 * cache on these targets (threads.c), and cache-stress refuses the case there. */
void lib_alloc(int n);
void lib_alloc(int n)
{
    void *volatile block = malloc((size_t)n + 16);
    (void)block;
}
#endif
