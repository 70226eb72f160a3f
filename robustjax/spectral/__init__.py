"""Spectral norms (dense and convolutional) and Paper B's spectral regularizers."""
from robustjax.spectral.capture import ConvLayer, conv_layers
from robustjax.spectral.conv_norm import conv_operator_norm
from robustjax.spectral.eig_ub import activation_slope_penalty
from robustjax.spectral.power_iteration import top_singular_value
from robustjax.spectral.regularizers import (KINDS, REP_KINDS, SpectralSpec, SpectralState,
                                             init_vectors, layer_mask, penalize, penalty,
                                             sigma_max)

__all__ = ['top_singular_value', 'conv_operator_norm', 'ConvLayer', 'conv_layers', 'KINDS',
           'SpectralSpec', 'SpectralState', 'layer_mask', 'init_vectors', 'penalty', 'penalize',
           'sigma_max', 'REP_KINDS', 'activation_slope_penalty']
