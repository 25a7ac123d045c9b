/*
 * hsaKmtSVMSetAttr / hsaKmtSVMGetAttr through node ids: locations, access answered through
 * the entry's type, flags and granularity, the defaults of memory never registered (with
 * XNACK off and on), sub-ranges that disagree, libhsakmt's argument checks and the kernel's
 * errors (errno), ranges dropped on munmap, and data kept across prefetches.
 */
#define _GNU_SOURCE
#include "harness.h"

static topology_t T;
static HSAuint32 gpu, gpu2;

static HSA_SVM_ATTRIBUTE attr(HSAuint32 type, HSAuint32 value) {
    HSA_SVM_ATTRIBUTE a = {type, value};
    return a;
}

static HSAKMT_STATUS set1(void *p, size_t n, HSAuint32 type, HSAuint32 value) {
    HSA_SVM_ATTRIBUTE a = attr(type, value);
    return hsaKmtSVMSetAttr(p, n, 1, &a);
}

/* GET of one attribute; its value (0xDEADBEEF when the call failed). */
static HSAuint32 get1(void *p, size_t n, HSAuint32 type, HSAuint32 in) {
    HSA_SVM_ATTRIBUTE a = attr(type, in);
    if (!CHECK_OK(hsaKmtSVMGetAttr(p, n, 1, &a))) return 0xDEADBEEF;
    return a.value;
}

/* The type an ACCESS query of `node` answers with. */
static HSAuint32 access_type(void *p, size_t n, HSAuint32 node) {
    HSA_SVM_ATTRIBUTE a = attr(HSA_SVM_ATTR_ACCESS, node);
    if (!CHECK_OK(hsaKmtSVMGetAttr(p, n, 1, &a))) return 0xDEADBEEF;
    CHECK_EQ(a.value, node);
    return a.type;
}

/* kfdtest's SetGetAttributesTest, on a page never registered. */
static void defaults(int xnack) {
    void *p = map_anon(PAGE);
    HSA_SVM_ATTRIBUTE a[5] = {
        attr(HSA_SVM_ATTR_PREFETCH_LOC, gpu),
        attr(HSA_SVM_ATTR_PREFERRED_LOC, gpu),
        attr(HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_HOST_ACCESS | HSA_SVM_FLAG_GPU_EXEC |
                                         HSA_SVM_FLAG_COHERENT),
        attr(HSA_SVM_ATTR_GRANULARITY, 0x3F),
        attr(HSA_SVM_ATTR_ACCESS, gpu),
    };
    HSA_SVM_ATTRIBUTE q[5];
    memcpy(q, a, sizeof q);
    CHECK_OK(hsaKmtSVMGetAttr(p, PAGE, 5, q));
    CHECK_EQ(q[0].value, INVALID_NODEID);
    CHECK_EQ(q[1].value, INVALID_NODEID);
    CHECK_EQ(q[2].type, HSA_SVM_ATTR_SET_FLAGS);
    CHECK_EQ(q[2].value, HSA_SVM_FLAG_HOST_ACCESS | HSA_SVM_FLAG_COHERENT);
    CHECK_EQ(q[3].value, 9); /* the kernel's default granularity */
    CHECK_EQ(q[4].type, xnack ? HSA_SVM_ATTR_ACCESS : HSA_SVM_ATTR_NO_ACCESS);
    CHECK_EQ(q[4].value, gpu);
    CHECK_EQ(access_type(p, PAGE, gpu2), xnack ? HSA_SVM_ATTR_ACCESS : HSA_SVM_ATTR_NO_ACCESS);

    CHECK_OK(hsaKmtSVMSetAttr(p, PAGE, 5, a));
    memcpy(q, a, sizeof q);
    CHECK_OK(hsaKmtSVMGetAttr(p, PAGE, 5, q));
    CHECK_EQ(q[0].value, gpu);
    CHECK_EQ(q[1].value, gpu);
    CHECK_EQ(q[2].value, 0x13); /* SET_FLAGS ORs onto HOST_ACCESS | COHERENT */
    CHECK_EQ(q[3].value, 0x3F);
    CHECK_EQ(q[4].type, HSA_SVM_ATTR_ACCESS);
    CHECK_EQ(q[4].value, gpu);
    munmap(p, PAGE);

    /* A new range (made by a SET of something else) starts with the same defaults. */
    p = map_anon(PAGE);
    CHECK_OK(set1(p, PAGE, HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_GPU_EXEC));
    CHECK_EQ(get1(p, PAGE, HSA_SVM_ATTR_PREFERRED_LOC, 0), INVALID_NODEID);
    CHECK_EQ(get1(p, PAGE, HSA_SVM_ATTR_PREFETCH_LOC, 0), INVALID_NODEID);
    CHECK_EQ(get1(p, PAGE, HSA_SVM_ATTR_SET_FLAGS, 0), 0x13);
    CHECK_EQ(access_type(p, PAGE, gpu), xnack ? HSA_SVM_ATTR_ACCESS : HSA_SVM_ATTR_NO_ACCESS);
    munmap(p, PAGE);
}

static void values(void) {
    const size_t N = 16 * PAGE;
    char *p = new_svm(N, gpu, 0);

    PHASE("locations are node ids");
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), 0);
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), 0);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, gpu));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), gpu);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, gpu2));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), gpu2);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, INVALID_NODEID));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), INVALID_NODEID);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), 0);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, gpu));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0xEEEE), 0);

    PHASE("sub-ranges that disagree (kfdtest's PrefetchTest)");
    CHECK_OK(set1(p + N / 2, N / 2, HSA_SVM_ATTR_PREFETCH_LOC, gpu));
    CHECK_EQ(get1(p + N / 2, N / 2, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu);
    CHECK_EQ(get1(p, N / 2, HSA_SVM_ATTR_PREFETCH_LOC, 0), 0);
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), INVALID_NODEID);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), 0);

    PHASE("access answered through the type");
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_ACCESS, gpu));
    CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_ACCESS);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_ACCESS_IN_PLACE, gpu));
    CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_ACCESS_IN_PLACE);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_ACCESS, gpu));
    CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_ACCESS);
    {
        /* The kernel asks with ACCESS only: the other two types are invalid in a GET. */
        HSA_SVM_ATTRIBUTE r = attr(HSA_SVM_ATTR_NO_ACCESS, gpu);
        CHECK_ERRNO(hsaKmtSVMGetAttr(p, N, 1, &r), EINVAL);
        r = attr(HSA_SVM_ATTR_ACCESS_IN_PLACE, gpu);
        CHECK_ERRNO(hsaKmtSVMGetAttr(p, N, 1, &r), EINVAL);
    }
    if (gpu2 != gpu) {
        CHECK_EQ(access_type(p, N, gpu2), HSA_SVM_ATTR_NO_ACCESS);
        CHECK_OK(set1(p, N, HSA_SVM_ATTR_ACCESS_IN_PLACE, gpu2));
        CHECK_EQ(access_type(p, N, gpu2), HSA_SVM_ATTR_ACCESS_IN_PLACE);
        CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_ACCESS);
        /* Several ACCESS queries in one call each get their answer. */
        HSA_SVM_ATTRIBUTE q[3] = {attr(HSA_SVM_ATTR_ACCESS, gpu2), attr(HSA_SVM_ATTR_ACCESS, gpu),
                                  attr(HSA_SVM_ATTR_PREFERRED_LOC, 0xEEEE)};
        CHECK_OK(hsaKmtSVMGetAttr(p, N, 3, q));
        CHECK_EQ(q[0].type, HSA_SVM_ATTR_ACCESS_IN_PLACE);
        CHECK_EQ(q[0].value, gpu2);
        CHECK_EQ(q[1].type, HSA_SVM_ATTR_ACCESS);
        CHECK_EQ(q[1].value, gpu);
        CHECK_EQ(q[2].type, HSA_SVM_ATTR_PREFERRED_LOC);
        CHECK_EQ(q[2].value, 0);
    }
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_NO_ACCESS, gpu));
    CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_NO_ACCESS);
    if (gpu2 != gpu) CHECK_EQ(access_type(p, N, gpu2), HSA_SVM_ATTR_ACCESS_IN_PLACE);
    /* Sub-ranges that disagree: the answer for the whole is the weakest. */
    CHECK_OK(set1(p, PAGE, HSA_SVM_ATTR_ACCESS, gpu));
    CHECK_EQ(access_type(p, PAGE, gpu), HSA_SVM_ATTR_ACCESS);
    CHECK_EQ(access_type(p + PAGE, PAGE, gpu), HSA_SVM_ATTR_NO_ACCESS);
    CHECK_EQ(access_type(p, N, gpu), HSA_SVM_ATTR_NO_ACCESS);

    PHASE("flags and granularity");
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_SET_FLAGS, 0), 3);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_GPU_EXEC));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_SET_FLAGS, 0), 0x13);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_GPU_READ_MOSTLY));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_SET_FLAGS, 0), 0x33);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_CLR_FLAGS, HSA_SVM_FLAG_GPU_EXEC | HSA_SVM_FLAG_COHERENT));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_SET_FLAGS, 0), 0x21);
    /* Flags of sub-ranges come back ANDed. */
    CHECK_OK(set1(p, PAGE, HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_GPU_EXEC));
    CHECK_EQ(get1(p, PAGE, HSA_SVM_ATTR_SET_FLAGS, 0), 0x31);
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_SET_FLAGS, 0), 0x21);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_GRANULARITY, 4));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_GRANULARITY, 0), 4);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_GRANULARITY, 0xFF));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_GRANULARITY, 0), 0x3F);
    munmap(p, N);
}

static void errors(void) {
    /* Four pages registered, then four pages surely unmapped. */
    char *p = map_anon(8 * PAGE);
    REQUIRE(munmap(p + 4 * PAGE, 4 * PAGE) == 0, "munmap");
    CHECK_OK(register_svm(p, 4 * PAGE, gpu, 0, 3));
    HSA_SVM_ATTRIBUTE a = attr(HSA_SVM_ATTR_PREFETCH_LOC, 0);
    HSAuint32 beyond = T.num_nodes;
    const HSAKMT_STATUS INVAL = HSAKMT_STATUS_INVALID_PARAMETER, NODE = HSAKMT_STATUS_INVALID_NODE_UNIT;

    PHASE("bad intervals");
    CHECK_STATUS(hsaKmtSVMSetAttr(NULL, PAGE, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMGetAttr(NULL, PAGE, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMSetAttr(p, 0, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMGetAttr(p, 0, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMSetAttr(p + 1, PAGE, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMGetAttr(p + 8, PAGE, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMSetAttr(p, PAGE + 1, 1, &a), INVAL);
    CHECK_STATUS(hsaKmtSVMGetAttr(p, PAGE / 2, 1, &a), INVAL);

    PHASE("bad node ids");
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_PREFERRED_LOC, beyond), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_PREFETCH_LOC, beyond), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_ACCESS, beyond), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_ACCESS_IN_PLACE, beyond + 7), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_NO_ACCESS, beyond), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_ACCESS, 0), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_ACCESS_IN_PLACE, 0), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_NO_ACCESS, 0), NODE);
    CHECK_STATUS(set1(p, PAGE, HSA_SVM_ATTR_PREFETCH_LOC, INVALID_NODEID), NODE);
    {
        HSA_SVM_ATTRIBUTE q = attr(HSA_SVM_ATTR_ACCESS, beyond);
        CHECK_STATUS(hsaKmtSVMGetAttr(p, PAGE, 1, &q), NODE);
    }
    /* A refused list changes nothing, even its valid entries. */
    {
        HSA_SVM_ATTRIBUTE l[2] = {attr(HSA_SVM_ATTR_PREFERRED_LOC, gpu),
                                  attr(HSA_SVM_ATTR_ACCESS, 0)};
        CHECK_STATUS(hsaKmtSVMSetAttr(p, PAGE, 2, l), NODE);
        CHECK_EQ(get1(p, PAGE, HSA_SVM_ATTR_PREFERRED_LOC, 0), 0);
    }

    PHASE("kernel errors");
    /* kfdtest's InvalidRangeTest: nothing is mapped at 0x10000. */
    CHECK_ERRNO(register_svm((void *)0x10000, PAGE, gpu, 0, 3), EFAULT);
    CHECK_ERRNO(set1((void *)0x10000, PAGE, HSA_SVM_ATTR_PREFETCH_LOC, gpu), EFAULT);
    CHECK_STATUS(hsaKmtSVMGetAttr((void *)0x10000, PAGE, 1, &a), HSAKMT_STATUS_ERROR);
    /* A range that runs past the mapping. */
    CHECK_ERRNO(set1(p, 8 * PAGE, HSA_SVM_ATTR_PREFETCH_LOC, gpu), EFAULT);
    CHECK_STATUS(hsaKmtSVMGetAttr(p, 8 * PAGE, 1, &a), HSAKMT_STATUS_ERROR);
    /* An attribute type the kernel does not know. */
    CHECK_ERRNO(set1(p, PAGE, 99, 0), EINVAL);
    {
        HSA_SVM_ATTRIBUTE q = attr(99, 0);
        CHECK_ERRNO(hsaKmtSVMGetAttr(p, PAGE, 1, &q), EINVAL);
    }
    munmap(p, 4 * PAGE);
}

static void after_munmap(void) {
    PHASE("ranges go with munmap");
    const size_t N = 4 * PAGE;
    char *p = new_svm(N, gpu, gpu);
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_SET_FLAGS, HSA_SVM_FLAG_GPU_EXEC));
    CHECK_OK(set1(p, N, HSA_SVM_ATTR_GRANULARITY, 3));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu);
    REQUIRE(munmap(p, N) == 0, "munmap");
    HSA_SVM_ATTRIBUTE a = attr(HSA_SVM_ATTR_PREFETCH_LOC, 0);
    CHECK_STATUS(hsaKmtSVMGetAttr(p, N, 1, &a), HSAKMT_STATUS_ERROR);
    fprintf(stderr, "   GET after munmap: errno %d (%s)\n", errno, strerror(errno));
    CHECK_STATUS(hsaKmtSVMSetAttr(p, N, 1, &a), HSAKMT_STATUS_ERROR);

    /* A new mapping at the same address has the defaults of memory never registered. */
    char *q = mmap(p, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                   -1, 0);
    REQUIRE(q == p, "mmap at %p gave %p (%s)", (void *)p, (void *)q, strerror(errno));
    CHECK_EQ(get1(q, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), INVALID_NODEID);
    CHECK_EQ(get1(q, N, HSA_SVM_ATTR_PREFERRED_LOC, 0), INVALID_NODEID);
    CHECK_EQ(get1(q, N, HSA_SVM_ATTR_SET_FLAGS, 0), 3);
    CHECK_EQ(get1(q, N, HSA_SVM_ATTR_GRANULARITY, 0), 9);
    CHECK_EQ(access_type(q, N, gpu), HSA_SVM_ATTR_NO_ACCESS);
    /* The page is new: zero, whatever the old range held in VRAM. */
    CHECK_EQ(((volatile uint32_t *)q)[5], 0);
    /* Half unmapped: the rest keeps its attributes, the hole fails. */
    CHECK_OK(register_svm(q, N, gpu, gpu, 3));
    REQUIRE(munmap(q + 2 * PAGE, PAGE) == 0, "munmap");
    CHECK_EQ(get1(q, 2 * PAGE, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu);
    CHECK_EQ(get1(q + 3 * PAGE, PAGE, HSA_SVM_ATTR_PREFERRED_LOC, 0), gpu);
    CHECK_STATUS(hsaKmtSVMGetAttr(q, N, 1, &a), HSAKMT_STATUS_ERROR);
    munmap(q, N);
}

static void data_survives_prefetch(void) {
    PHASE("data across prefetches");
    const size_t N = 4 << 20;
    char *p = map_anon(N);
    fill_pattern(p, N, 0x5151);
    CHECK_OK(register_svm(p, N, gpu, 0, 3));
    CHECK_PATTERN(p, N, 0x5151);
    CHECK_OK(prefetch_svm(p, N, gpu));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu);
    CHECK_PATTERN(p, N, 0x5151);
    /* Written while in VRAM, prefetched to the other GPU (with XNACK on it moves there; with
     * XNACK off the kernel's policy keeps a range that a GPU outside its hive accesses in
     * RAM), then part of it back to the first GPU, then all to RAM. */
    CHECK_OK(prefetch_svm(p, N, gpu));
    fill_pattern(p, N, 0x6262);
    CHECK_OK(prefetch_svm(p, N, gpu2));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), gpu2);
    CHECK_PATTERN(p, N, 0x6262);
    CHECK_OK(prefetch_svm(p + N / 2, N / 2, gpu));
    CHECK_OK(prefetch_svm(p, N, 0));
    CHECK_EQ(get1(p, N, HSA_SVM_ATTR_PREFETCH_LOC, 0), 0);
    CHECK_PATTERN(p, N, 0x6262);
    munmap(p, N);
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    gpu2 = T.num_gpus > 1 ? T.gpus[1] : T.gpus[0];

    HSAint32 x = -1;
    CHECK_OK(hsaKmtGetXNACKMode(&x));
    CHECK_EQ(x, 0);
    PHASE("defaults, XNACK off");
    defaults(0);
    values();
    errors();
    after_munmap();
    data_survives_prefetch();

    PHASE("defaults, XNACK on");
    CHECK_OK(hsaKmtSetXNACKMode(1));
    CHECK_OK(hsaKmtGetXNACKMode(&x));
    CHECK_EQ(x, 1);
    defaults(1);
    data_survives_prefetch();
    CHECK_OK(hsaKmtSetXNACKMode(0));
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
