/*
 * A minimal 64-bit guest that times device accesses from CPL3, where PVM
 * (the paravirtual /dev/kvm of some cloud hosts) runs guest code natively;
 * CPL0 code there goes through KVM's instruction emulator. The VMM enters
 * _start in 64-bit mode at CPL0 with %rsi pointing at the zero page. We map
 * the low 4 GiB with user pages, load a GDT with user segments and iretq to
 * CPL3 with IOPL 3, which parses the kernel command line:
 *
 *     OP ADDR COUNT [GAP]    OP: r = 32-bit MMIO read, w = 32-bit MMIO
 *                            write, i = 32-bit port read; ADDR, COUNT and
 *                            GAP in hex. GAP: iterations of an empty loop
 *                            after each access (default 0), so that the
 *                            device and the vCPU thread see time between
 *                            accesses as a driver's would
 *
 * does COUNT accesses, prints "probe: done" on COM1 and resets through the
 * i8042, which ends the VMM with status 0. The host times whole runs with
 * two counts and divides the difference (ci/bench-probe.sh).
 */
        .set ZP_CMD_LINE_PTR, 0x228
        .set USER_DS, 3 * 8 + 3
        .set USER_CS, 4 * 8 + 3
        .set COM1, 0x3f8

        .section .text
        .code64
        .globl _start
_start:
        mov     %rsi, %r15                      /* zero page */
        /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB
         * user pages covering 0..4 GiB. */
        lea     pml4(%rip), %rdi
        lea     pdpt(%rip), %rax
        or      $7, %rax
        mov     %rax, (%rdi)
        lea     pdpt(%rip), %rdi
        lea     pds(%rip), %rax
        or      $7, %rax
        mov     $4, %ecx
1:      mov     %rax, (%rdi)
        add     $8, %rdi
        add     $4096, %rax
        loop    1b
        lea     pds(%rip), %rdi
        mov     $0x87, %rax                     /* P RW US PS */
        mov     $2048, %ecx
2:      mov     %rax, (%rdi)
        add     $8, %rdi
        add     $0x200000, %rax
        loop    2b
        lea     pml4(%rip), %rax
        mov     %rax, %cr3
        lgdt    gdt_desc(%rip)
        /* To CPL3 with IOPL 3 and interrupts off. */
        lea     user_stack_top(%rip), %rax
        push    $USER_DS
        push    %rax
        push    $0x3002
        push    $USER_CS
        lea     user(%rip), %rax
        push    %rax
        iretq

/* CPL3 from here on. */
user:
        mov     $USER_DS, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     ZP_CMD_LINE_PTR(%r15), %esi     /* command line */
        movzbl  (%rsi), %r12d                   /* OP */
        inc     %rsi
        call    parse_hex
        mov     %rax, %r13                      /* ADDR */
        call    parse_hex
        mov     %rax, %rbx                      /* COUNT */
        call    parse_hex
        mov     %rax, %r14                      /* GAP */
        mov     %rbx, %rcx
        test    %rcx, %rcx
        jz      done
        cmp     $'r', %r12b
        je      do_read
        cmp     $'w', %r12b
        je      do_write
        cmp     $'i', %r12b
        je      do_pio
        jmp     done
do_read:
        mov     (%r13), %eax
        call    gap
        dec     %rcx
        jnz     do_read
        jmp     done
do_write:
        mov     %ecx, (%r13)
        call    gap
        dec     %rcx
        jnz     do_write
        jmp     done
do_pio:
        mov     %r13w, %dx
3:      in      %dx, %eax
        call    gap
        dec     %rcx
        jnz     3b
done:
        lea     message(%rip), %rsi
        mov     $COM1, %dx
4:      movzbl  (%rsi), %eax
        test    %al, %al
        jz      5f
        out     %al, %dx
        inc     %rsi
        jmp     4b
5:      mov     $0xfe, %al                      /* i8042: pulse reset */
        out     %al, $0x64
6:      jmp     6b

/* Spins GAP (%r14) iterations; clobbers only %r8. */
gap:
        mov     %r14, %r8
        test    %r8, %r8
        jz      13f
12:     dec     %r8
        jnz     12b
13:     ret

/* Skips spaces, reads hex digits (an optional 0x prefix) from (%rsi). */
parse_hex:
        xor     %eax, %eax
7:      movzbl  (%rsi), %edx
        cmp     $' ', %dl
        jne     8f
        inc     %rsi
        jmp     7b
8:      cmpb    $'0', (%rsi)
        jne     9f
        cmpb    $'x', 1(%rsi)
        jne     9f
        add     $2, %rsi
9:      movzbl  (%rsi), %edx
        sub     $'0', %edx
        cmp     $9, %edx
        jbe     10f
        movzbl  (%rsi), %edx
        or      $0x20, %edx
        sub     $'a', %edx
        cmp     $5, %edx
        ja      11f
        add     $10, %edx
10:     shl     $4, %rax
        or      %rdx, %rax
        inc     %rsi
        jmp     9b
11:     ret

        .section .rodata
message:
        .asciz  "probe: done\n"

        .section .data
        .balign 16
gdt:
        .quad   0
        .quad   0x00af9a000000ffff              /* kernel code64 */
        .quad   0x00cf92000000ffff              /* kernel data */
        .quad   0x00cff2000000ffff              /* user data, DPL 3 */
        .quad   0x00affa000000ffff              /* user code64, DPL 3 */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .quad   gdt

        .section .bss
        .balign 4096
pml4:   .skip   4096
pdpt:   .skip   4096
pds:    .skip   4 * 4096
user_stack:
        .skip   4096
user_stack_top:
