// A host function with a C++-mangled name, standing where nvcc puts a
// kernel's host stub: its address is what cudaLaunchKernel receives as func.
namespace mykernels {
template <typename T>
void scale_kernel(T *x, int n, T factor)
{
    for (int i = 0; i < n; i++)
        x[i] *= factor;
}
template void scale_kernel<float>(float *, int, float);
}  // namespace mykernels

extern "C" void *scale_kernel_address(void)
{
    return reinterpret_cast<void *>(&mykernels::scale_kernel<float>);
}
