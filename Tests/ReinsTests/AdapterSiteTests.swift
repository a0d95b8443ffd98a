import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The insertion-point protocol as generic code uses it: add through a site, merge and unmerge a whole adapter.
struct AdapterSiteTests {
    let ids = try! IntTensor(shape: [2, 4], values: [5, 17, 42, 3, 8, 9, 1, 77])

    @Test func mergingAnAdapterFoldsEverySiteAndUnmergingRestoresTheBaseExactly() throws {
        let model = try BottleneckAdapterTests().gpt2()
        try model.addAdapter("task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn", "c_fc"])))
        for p in model.trainableParameters {
            p.value = try Tensor.normal(p.value.shape, std: 0.1, seed: 5).requiringGradient()
        }
        let base = model.namedParameters().map { $0.parameter.value.scalars }
        let adapted = try model.logits(ids)
        try model.mergeAdapter("task")
        expectClose(try model.logits(ids), adapted, atol: 1e-5, rtol: 1e-4, "merged equals unmerged")
        try model.unmergeAdapters()
        #expect(model.namedParameters().map { $0.parameter.value.scalars } == base, "the base restored bit for bit")
        // A bottleneck adapter is not folded into the base: named, and nothing merged.
        try model.addAdapter("bottleneck", .houlsby(bottleneck: 3))
        #expect(performing: { try model.mergeAdapter("bottleneck") }, throws: { "\($0)".contains("'bottleneck'") })
        #expect(!model.namedModules().contains { ($0.module as? any LoRAHost)?.isMerged == true })
        #expect(throws: ModelError.self) { try model.mergeAdapter("absent") }
    }

    @Test func sitesAddOnlyAdaptersOfTheirKind() throws {
        let model = try BottleneckAdapterTests().gpt2()
        let layer = model.transformer.blocks[0].attentionIn
        let sites = layer.ownAdapterSites
        let lora = LoRA(a: try Tensor.normal([2, 30], seed: 1), b: try Tensor.zeros([90, 2]), scale: 1)
        // The same LoRA offered to every site of the layer: the LoRA site takes it, the others name the mismatch.
        var taken = 0
        for site in sites {
            do { try site.add("x", lora); taken += 1 } catch let error as ModelError {
                #expect("\(error)".contains("does not go into"), "\(error)")
            }
        }
        #expect(taken == 1 && layer.loras["x"] != nil)
        #expect(model.adapterNames == ["x"])
    }

    /// The cheaper walks a server makes for every request see what the full ones see: the modules without their keys
    /// are `namedModules()`'s, in order, and each site (and the model) holds exactly the names it lists — every
    /// method's adapter on GPT-2 and Llama, and names it does not have.
    @Test(arguments: ["gpt2-lm", "llama-tiny"])
    func keylessWalksAndHoldsAgreeWithTheListings(family: String) throws {
        let (model, names) = try MixedBatchTests.adapted(family)
        let keyless = model.descendantModules().map { ObjectIdentifier($0) }
        #expect(keyless == model.namedModules().map { ObjectIdentifier($0.module) })
        let sites = model.adapterSites
        for name in names + ["absent", ""] {
            #expect(model.hasAdapter(name) == model.adapterNames.contains(name), "\(family): \(name)")
            for site in sites {
                #expect(site.holds(name) == site.adapterNames.contains(name), "\(family): \(name) at \(type(of: site))")
            }
        }
        #expect(names.count > 10 && names.allSatisfy { model.hasAdapter($0) })
    }
}
