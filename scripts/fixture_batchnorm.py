"""Shared by the checkpoint fixture scripts (torch-checkpoints.py,
smp-unet-checkpoint.py, torchvision-fcn-checkpoint.py): random batch-norm
statistics and affine parameters, so that eval-mode batch norm is really
exercised by the comparison with rstile."""
import torch


def randomise_batch_norm(model):
    """Draws every BatchNorm2d's running mean/var and weight/bias from the
    current torch seed (in module order), then puts the model in eval mode."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    model.eval()
