"""Model sections shared by the model tests: tower architectures, expert mixtures and history encoders, and the
configs built from them (on conftest.py's small config)."""

TOWERS = {
    "mlp": {"mlp_config": {"layer_sizes": [8, 6], "batch_norm": {}, "dropout": 0.1}},
    "dcn": {
        "dcn_config": {
            "poly_degree": 2,
            "projection_dim": 4,
            "parallel_mlp": {"layer_sizes": [6]},
            "output_mlp": {"layer_sizes": [5]},
        }
    },
    "mask_net_parallel": {
        "mask_net_config": {
            "use_parallel": True,
            "mlp": {"layer_sizes": [6]},
            "mask_blocks": [
                {"output_size": 6, "reduction_factor": 0.5},
                {"output_size": 4, "aggregation_size": 3},
            ],
        }
    },
    "mask_net_serial": {
        "mask_net_config": {
            "use_parallel": False,
            "mask_blocks": [
                {"output_size": 6, "reduction_factor": 0.5, "activation": "none"},
                {"output_size": 4, "aggregation_size": 3},
            ],
        }
    },
    "mask_net_serial_mlp": {
        "mask_net_config": {
            "use_parallel": False,
            "mlp": {"layer_sizes": [8, 8]},
            "mask_blocks": [
                {"output_size": 6, "reduction_factor": 0.5, "input_layer_norm": False},
                {"output_size": 4, "aggregation_size": 6},
            ],
        }
    },
}


def model_section(sharing: str, tower: str) -> dict:
    """The model keys of `sharing` with `tower` as every task's tower (and the backbone's and experts')."""
    section = {
        "multi_task_type": sharing,
        "tasks": {"fav": dict(TOWERS[tower]), "report": dict(TOWERS[tower])},
    }
    if sharing != "share_none":
        section["backbone"] = TOWERS[tower]
    section.update(MIXTURES.get(sharing, {}))
    return section


# Expert counts of the mixtures: every expert is a copy of the backbone's architecture.
MIXTURES = {
    "mmoe": {"mixture": {"num_experts": 3}},
    "ple": {"mixture": {"num_levels": 2, "num_task_experts": 1, "num_shared_experts": 2}},
}


def history_config(make_config, encoder: dict, sharing: str = "share_all"):
    """A config with one history group ("history": two id columns, actions, one continuous column) and `encoder`."""
    section = model_section(sharing, "mlp")
    section["sequences"] = {"history": {
        "embedding_dim": 8, "num_actions": 4, "encoder": encoder,
        "tables": {"hist_author": {"num_embeddings": 50}, "hist_tag": {"num_embeddings": 30, "id_transform": "mod"}},
    }}
    group = {"max_length": 6, "ids": [{"name": "hist_author", "candidate": "user_id"}, "hist_tag"],
             "actions": "hist_action", "continuous": ["hist_age"]}
    return make_config(section, overrides=[f"data.features.sequences={{history: {group}}}"])


ENCODERS = {
    "pooling": {"pooling": {"mode": "mean"}},
    "target_attention": {"target_attention": {"hidden_dims": [8], "softmax": True}},
    "transformer": {"transformer": {"num_layers": 2, "num_heads": 2, "positions": "rotary", "causal": True}},
}
