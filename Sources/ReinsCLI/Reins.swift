import ArgumentParser

@main
struct ReinsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reins",
        abstract: "Steer pretrained language models on the CPU: fine-tune them, or train small adapters on one frozen base.",
        subcommands: [InfoCommand.self, TokenizeCommand.self, GenerateCommand.self, FillMaskCommand.self, EmbedCommand.self, LogitsCommand.self, AdaptersCommand.self, ExtractLoRACommand.self, KernelsCommand.self, BenchCommand.self, DemoCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, TokenizerCommand.self, PretrainCommand.self]
    )
}
