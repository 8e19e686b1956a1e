/// The one place where built-in methods are registered: each family registers its own methods, in the
/// order `xfer methods` lists them.
#include "xfer/methods/datl.h"
#include "xfer/methods/finetune.h"
#include "xfer/methods/gradmix.h"
#include "xfer/methods/mixup.h"
#include "xfer/methods/registry.h"
#include "xfer/methods/regularization.h"
#include "xfer/methods/smile.h"
#include "xfer/methods/smooth.h"
#include "xfer/methods/xmixup.h"

namespace xfer {

void register_builtin_methods(MethodRegistry& r) {
  register_finetune_methods(r);
  register_regularization_methods(r);
  register_mixup_methods(r);
  register_xmixup_methods(r);
  register_smile_methods(r);
  register_smooth_methods(r);
  register_gradmix_methods(r);
  register_datl_methods(r);
}

}  // namespace xfer
