    .text
    .globl fma_peak
    .type fma_peak,@function
# void fma_peak(long iters): 12 independent chains of vfmadd231ps ymm (192 flop / iter)
fma_peak:
    vxorps %ymm0,%ymm0,%ymm0
    vxorps %ymm1,%ymm1,%ymm1
    vxorps %ymm2,%ymm2,%ymm2
    vxorps %ymm3,%ymm3,%ymm3
    vxorps %ymm4,%ymm4,%ymm4
    vxorps %ymm5,%ymm5,%ymm5
    vxorps %ymm6,%ymm6,%ymm6
    vxorps %ymm7,%ymm7,%ymm7
    vxorps %ymm8,%ymm8,%ymm8
    vxorps %ymm9,%ymm9,%ymm9
    vxorps %ymm10,%ymm10,%ymm10
    vxorps %ymm11,%ymm11,%ymm11
    vxorps %ymm12,%ymm12,%ymm12
    vxorps %ymm13,%ymm13,%ymm13
1:
    vfmadd231ps %ymm12,%ymm13,%ymm0
    vfmadd231ps %ymm12,%ymm13,%ymm1
    vfmadd231ps %ymm12,%ymm13,%ymm2
    vfmadd231ps %ymm12,%ymm13,%ymm3
    vfmadd231ps %ymm12,%ymm13,%ymm4
    vfmadd231ps %ymm12,%ymm13,%ymm5
    vfmadd231ps %ymm12,%ymm13,%ymm6
    vfmadd231ps %ymm12,%ymm13,%ymm7
    vfmadd231ps %ymm12,%ymm13,%ymm8
    vfmadd231ps %ymm12,%ymm13,%ymm9
    vfmadd231ps %ymm12,%ymm13,%ymm10
    vfmadd231ps %ymm12,%ymm13,%ymm11
    dec %rdi
    jnz 1b
    vzeroupper
    ret
    .size fma_peak,.-fma_peak

    .globl add_chain
    .type add_chain,@function
# long add_chain(long iters): 16 dependent 1-cycle integer adds per iteration
add_chain:
    xor %eax,%eax
1:
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    add $1,%rax
    dec %rdi
    jnz 1b
    ret
    .size add_chain,.-add_chain

    .globl fma_chain
    .type fma_chain,@function
# void fma_chain(long iters): 8 dependent vfmadd231ps per iteration (latency-bound)
fma_chain:
    vxorps %ymm0,%ymm0,%ymm0
    vxorps %ymm1,%ymm1,%ymm1
    vxorps %ymm2,%ymm2,%ymm2
1:
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    vfmadd231ps %ymm1,%ymm2,%ymm0
    dec %rdi
    jnz 1b
    vzeroupper
    ret
    .size fma_chain,.-fma_chain
    .section .note.GNU-stack,"",@progbits
