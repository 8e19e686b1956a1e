/// The one place where built-in methods are registered: each family registers its own methods, in the
/// order `xfer methods` lists them.
#include "xfer/methods/finetune.h"
#include "xfer/methods/gradmix.h"
#include "xfer/methods/registry.h"

namespace xfer {

void register_builtin_methods(MethodRegistry& r) {
  register_finetune_methods(r);
  register_gradmix_methods(r);
}

}  // namespace xfer
