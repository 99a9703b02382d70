import importlib.util

from conftest import REPO


def test_custom_loop_example_prunes_to_the_exact_budget():
    spec = importlib.util.spec_from_file_location("custom_loop",
                                                  REPO / "examples" / "custom_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(all_percent=95.0, k_step=2)
    assert result["kept"] == result["total"] - round(95.0 * result["total"] / 100)
    assert result["pruned_accuracy"] > 0.5  # generated data is easy; chance is 0.1
