/* A stand-in libcurand.so.10 for GPU machines that have no cuRAND (PyTorch's
 * cu13 wheels ship none).  candle creates a cuRAND generator in every
 * Device::new_cuda although rstile never draws random numbers on the GPU
 * (dropout masks are made on the host), so creating, seeding, streaming and
 * destroying succeed here and every generate call fails with
 * CURAND_STATUS_NOT_INITIALIZED (101): a candle error, never wrong numbers.
 * Used by scripts/gpu-run.sh only when no real libcurand.so.10 is found.
 * Built by scripts/build-cuda.sh into target/cuda/release/cuda-stubs/. */
#include <stddef.h>

typedef void *curandGenerator_t;
enum { OK = 0, NOT_INITIALIZED = 101 };
static int dummy;

int curandCreateGenerator(curandGenerator_t *g, int kind) { (void)kind; *g = &dummy; return OK; }
int curandDestroyGenerator(curandGenerator_t g) { (void)g; return OK; }
int curandSetStream(curandGenerator_t g, void *s) { (void)g; (void)s; return OK; }
int curandSetPseudoRandomGeneratorSeed(curandGenerator_t g, unsigned long long s) { (void)g; (void)s; return OK; }
int curandSetGeneratorOffset(curandGenerator_t g, unsigned long long o) { (void)g; (void)o; return OK; }
int curandGetVersion(int *v) { *v = 0; return OK; }
int curandGenerate(curandGenerator_t g, unsigned *o, size_t n) { (void)g; (void)o; (void)n; return NOT_INITIALIZED; }
int curandGenerateLongLong(curandGenerator_t g, unsigned long long *o, size_t n) { (void)g; (void)o; (void)n; return NOT_INITIALIZED; }
int curandGenerateUniform(curandGenerator_t g, float *o, size_t n) { (void)g; (void)o; (void)n; return NOT_INITIALIZED; }
int curandGenerateUniformDouble(curandGenerator_t g, double *o, size_t n) { (void)g; (void)o; (void)n; return NOT_INITIALIZED; }
int curandGenerateNormal(curandGenerator_t g, float *o, size_t n, float m, float s) { (void)g; (void)o; (void)n; (void)m; (void)s; return NOT_INITIALIZED; }
int curandGenerateNormalDouble(curandGenerator_t g, double *o, size_t n, double m, double s) { (void)g; (void)o; (void)n; (void)m; (void)s; return NOT_INITIALIZED; }
int curandGenerateLogNormal(curandGenerator_t g, float *o, size_t n, float m, float s) { (void)g; (void)o; (void)n; (void)m; (void)s; return NOT_INITIALIZED; }
int curandGenerateLogNormalDouble(curandGenerator_t g, double *o, size_t n, double m, double s) { (void)g; (void)o; (void)n; (void)m; (void)s; return NOT_INITIALIZED; }
